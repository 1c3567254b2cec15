"""A branch's recorded events in memory, read as step boundaries, with a cursor.

Replay groups the log by `step`: every command of a boundary carries it, so the events of
the boundary after optimizer step S are exactly those with `step == S` (the start of a run is
step 0). Some recorded events are *administrative*: a re-executed run does not issue them
again, because they record that the run was stopped, resumed or rolled back rather than what
training did: `RunRolledBack`, `TrainingStopped(reason=interrupted)` and the `Checkpointed`
that goes with either. A `TrainingStopped(completed)` is matched when the re-execution ends
the run there too, and skipped when it goes on (a resume with more epochs).
"""

from __future__ import annotations

from collections.abc import Iterable

from esper_es.core import events as ev
from esper_es.core.envelope import RecordedEvent
from esper_es.store.protocol import RunStore


def step_of(rec: RecordedEvent) -> int:
    """The boundary an event belongs to (0 for the run's start)."""
    step = rec.payload.get("step", 0)
    return int(step) if isinstance(step, int) else 0


def admin_seqs(events: Iterable[RecordedEvent]) -> set[int]:
    """The seqs of administrative events (see the module doc)."""
    recs = list(events)
    out: set[int] = set()
    for i, rec in enumerate(recs):
        e = rec.event
        if isinstance(e, ev.RunRolledBack) or (
            isinstance(e, ev.TrainingStopped) and e.reason == "interrupted"
        ):
            out.add(rec.seq)
        elif isinstance(e, ev.Checkpointed):
            after = recs[i + 1].event if i + 1 < len(recs) else None
            before = recs[i - 1].event if i > 0 else None
            if (isinstance(after, ev.TrainingStopped) and after.reason == "interrupted") or (
                isinstance(before, ev.RunRolledBack)
            ):
                out.add(rec.seq)
    return out


def _completed_stop(rec: RecordedEvent) -> bool:
    return isinstance(rec.event, ev.TrainingStopped) and rec.event.reason == "completed"


class RecordedLog:
    """The events visible on `branch` up to `to_seq`, and a cursor over them."""

    def __init__(self, db: RunStore, branch: str, to_seq: int | None = None) -> None:
        self.db = db
        self.branch = branch
        self.events: list[RecordedEvent] = list(db.read(branch=branch, to_seq=to_seq))
        self.admin = admin_seqs(self.events)
        self.pos = 0
        self.last_seq = 0

    # --- the cursor ------------------------------------------------------------------------

    def peek(self) -> RecordedEvent | None:
        """The next event, administrative or not."""
        return self.events[self.pos] if self.pos < len(self.events) else None

    def take(self) -> RecordedEvent:
        """Consume the next event."""
        rec = self.events[self.pos]
        self.pos += 1
        return rec

    def seek(self, seq: int) -> None:
        """Put the cursor just after `seq`."""
        while self.pos < len(self.events) and self.events[self.pos].seq <= seq:
            self.pos += 1

    def next_match(self, event: ev.Event) -> tuple[list[RecordedEvent], RecordedEvent | None]:
        """The administrative events to skip, and the event a re-issued `event` must equal."""
        skipped: list[RecordedEvent] = []
        i = self.pos
        while i < len(self.events):
            rec = self.events[i]
            skip = (
                rec.seq in self.admin
                or (_completed_stop(rec) and not isinstance(event, ev.TrainingStopped))
                # Not re-issued by a recomputation (see esper_es.replay.session); the trainer
                # projects it with the events around it.
                or (
                    isinstance(rec.event, ev.KernelCompiled)
                    and not isinstance(event, ev.KernelCompiled)
                )
            )
            if not skip:
                return skipped, rec
            skipped.append(rec)
            i += 1
        return skipped, None

    def exhausted(self) -> bool:
        """Only administrative events (if any) are left."""
        return all(rec.seq in self.admin or _completed_stop(rec) for rec in self.events[self.pos :])

    # --- facts about the log ---------------------------------------------------------------

    def run_started(self) -> ev.RunStarted:
        """The run's RunStarted event."""
        for rec in self.events:
            if isinstance(rec.event, ev.RunStarted):
                return rec.event
        from esper_es.replay.errors import NotReplayable

        raise NotReplayable(f"{self.db.location} has no RunStarted event on branch {self.branch}")

    def completed_epochs(self) -> int | None:
        """The epoch count of a run whose log ends with `TrainingStopped(completed)`."""
        for rec in reversed(self.events):
            if rec.seq in self.admin:
                continue
            if _completed_stop(rec):
                assert isinstance(rec.event, ev.TrainingStopped)
                return rec.event.epoch
            return None
        return None

    def index_of(self, seq: int) -> int:
        """The position of `seq` in the events."""
        for i, rec in enumerate(self.events):
            if rec.seq == seq:
                return i
        raise KeyError(f"seq {seq} is not visible on branch {self.branch}")

    def latest_snapshot(self, at_most: int | None = None) -> RecordedEvent | None:
        """The last `Checkpointed` with a snapshot at or before `at_most`."""
        best = None
        for rec in self.events:
            if at_most is not None and rec.seq > at_most:
                break
            if isinstance(rec.event, ev.Checkpointed) and rec.event.snapshot:
                best = rec
        return best

    def id_counts(self, upto: int | None = None) -> dict[str, int]:
        """Per id prefix, the highest counter among the command and decision ids recorded."""
        out: dict[str, int] = {}
        for rec in self.events:
            if upto is not None and rec.seq > upto:
                break
            for value in (rec.causation_id, rec.correlation_id):
                count_id(value, out)
        return out


def count_id(value: str | None, out: dict[str, int]) -> None:
    """Fold one `prefix-counter` id into `out` (highest counter per prefix)."""
    if not value:
        return
    prefix, sep, count = value.rpartition("-")
    if sep and count.isdigit():
        out[prefix] = max(out.get(prefix, 0), int(count))
