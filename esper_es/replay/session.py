"""Re-executing a run from its log: the machinery replay, resume and rollback share.

A `Session` rebuilds the trainer of a recorded run (from `RunStarted`: config, master seed,
environment), optionally restores a snapshot, and drives the trainer's boundaries in one of
two modes (`Trainer.replay_source`):

- **recorded** (`replay`): each boundary applies the log's events of that step through the
  projector, never deciding anything; every `Checkpointed` is checked against the model.
- **recomputed** (`replay --recompute-decisions`, and the tail a resume or rollback
  re-executes): the lifecycle driver, the controller and the orchestrator run live and the
  bus, instead of appending, matches every event they produce against the log (ids, payloads,
  `Checkpointed` fingerprints). Their measurements and id counters then end where the original
  run's were, so a resume can go on live (`go_live`) exactly as the run would have.

`KernelCompiled` is the one fact a recomputation does not re-issue: when a background compile
finishes is not reproducible, so the recorded ones are applied from the log instead (the
matcher passes over them and the trainer projects them with the events around them, or
`after_boundary` applies them when nothing after them in their boundary is re-issued), and the
kernel is compiled synchronously there; the live part of a resume compiles in the background
again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import attrs

from esper_es.command_bus import CommandBus
from esper_es.config import RunConfig, config_from_record
from esper_es.core import events as ev
from esper_es.core.canonical import canonical_json
from esper_es.core.envelope import NewEvent, RecordedEvent
from esper_es.errors import EnvironmentMismatch, TamperDetected
from esper_es.nn.fingerprint import fingerprint_with_digests, optimizer_fingerprint
from esper_es.nn.telemetry import SeedSignal
from esper_es.replay.decisions import RecordedDecisions
from esper_es.replay.errors import Divergence, NotReplayable
from esper_es.replay.factory import (
    TrainerFactory,
    built_in_factory,
    prepare_trainer,
    resolve_factory,
)
from esper_es.replay.log import RecordedLog, count_id, step_of
from esper_es.runtime import ranks
from esper_es.runtime.device import recorded_device, to_device
from esper_es.runtime.environment import apply_settings, check_environment
from esper_es.runtime.rng import decode_rng_state, restore_rng_state, rng_digest
from esper_es.store.protocol import RunStore
from esper_es.store.records import MAIN, AppendResult
from esper_es.store.verify import check_chain
from esper_es.trainer.loop import Trainer
from esper_es.trainer.replay_source import Position
from esper_es.trainer.snapshots import read_snapshot

__all__ = ["Session", "TrainerFactory", "built_in_factory"]


def check_world(started: ev.RunStarted) -> None:
    """A run re-executes only with its world size and backend (SPEC §11): exit 4 otherwise."""
    group = ranks.current()
    here = (1, None) if group is None else (group.world_size, group.reported_backend)
    differences = [
        (name, recorded, now)
        for name, recorded, now in (
            ("world_size", started.world_size, here[0]),
            ("backend", started.backend, here[1]),
        )
        if recorded != now
    ]
    if differences:
        raise EnvironmentMismatch(
            differences,
            hint=f"re-execute it with --nproc {started.world_size} (the default for a logged run)",
        )


def prepare_environment(
    started: ev.RunStarted, config: RunConfig, allow_mismatch: bool
) -> list[tuple[str, Any, Any]]:
    """Apply the recorded settings this process can take, then compare the environment.

    The inter-op thread count is set only if the run's config set it (as the trainer did);
    otherwise it was the machine's default, and a different default is a real difference.
    """
    recorded = dict(started.environment)
    settable = dict(recorded)
    if not config.runtime.interop_threads:
        settable.pop("torch_num_interop_threads", None)
    try:
        apply_settings(settable)
    except EnvironmentMismatch:
        if not allow_mismatch:
            raise
    return check_environment(recorded, override=True)


class _Matcher:
    """Stands in for the run database under a re-executing bus: matches, never appends."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def append_batch(
        self, batches: Sequence[tuple[str, int, Sequence[NewEvent]]], *, branch: str = MAIN
    ) -> list[AppendResult]:
        out = []
        for stream, _, events in batches:
            seqs = [self.session.match(stream, ne) for ne in events]
            out.append(AppendResult(stream, tuple(seqs), -1))
        return out

    def read(self, **_: Any) -> list[RecordedEvent]:
        return []


class _MatchingBus(CommandBus):
    """A bus whose live state is the log's up to a seq and whose appends are matched."""

    def __init__(self, session: Session, config: Any, upto: int) -> None:
        self._session = session
        self._upto = upto
        super().__init__(cast(Any, _Matcher(session)), config, branch=session.log.branch)

    def _load(self) -> None:
        for rec in self._session.log.events:
            if rec.seq > self._upto:
                break
            self._apply(rec.event)


class Session:
    """One re-execution of a branch of a run database (see the module doc)."""

    def __init__(
        self,
        db: RunStore,
        *,
        branch: str = MAIN,
        to_seq: int | None = None,
        factory: TrainerFactory | None = None,
        allow_env_mismatch: bool = False,
        recorded: bool = True,
        then_live: bool = False,
        compile: bool | None = None,
        library: str | None = None,
    ) -> None:
        self.db = db
        db.branch(branch)
        # Verify before use (SPEC §6): nothing is re-executed, restored or appended on a log
        # whose chain does not hold.
        self.chain = check_chain(db)
        self.log = RecordedLog(db, branch, to_seq)
        self.started = self.log.run_started()
        if self.started.environment.get("kind") == "simulation":
            raise NotReplayable(
                f"{db.location} is a simulated run (esper-es simulate): it trained no model, so "
                "there is nothing to replay, resume or roll back; verify, history, inspect "
                "and report read it"
            )
        check_world(self.started)
        self.config = config_from_record(self.started.config)
        if compile is not None:
            # Compilation never changes the numbers (SPEC §6), so either setting replays.
            compiling = attrs.evolve(self.config.library, compile=compile)
            self.config = attrs.evolve(self.config, library=compiling)
        self.env_differences = prepare_environment(self.started, self.config, allow_env_mismatch)
        if self.env_differences and not allow_env_mismatch:
            raise EnvironmentMismatch(self.env_differences)
        factory = resolve_factory(self.started, factory)
        # On the kind of device the run recorded (`auto` may not pick another one here).
        with recorded_device(str(self.started.environment.get("device", "cpu"))):
            self.trainer = trainer = factory(self.config, self.started.master_seed, db.location)
        # The recorded `[library] path` is only read through the log (LibraryConsulted): live
        # outcomes go to a shared library only if the caller names one again.
        if library is not None:
            from esper_es.library.database import check_library_file

            check_library_file(Path(library), create=True)
        trainer.library_path = library
        prepare_trainer(trainer, db, self.started)
        trainer.run_id = db.run_id
        trainer.db = db
        trainer.replay_source = self
        trainer.writes_snapshots = False
        trainer.measures_telemetry = not recorded
        self.recorded = recorded
        self.then_live = then_live
        self.checked = 0
        self.from_snapshot: int | None = None
        self.on_check: Callable[[RecordedEvent], None] | None = None
        self.live = False
        self.decisions = RecordedDecisions(self.log)
        self._forks = self._fork_steps()

    # --- setting up ------------------------------------------------------------------------

    def _fork_steps(self) -> list[tuple[str, int]]:
        """`(branch, step of its fork point)` along the lineage, main first."""
        out = []
        for name, _ in reversed(self.db.lineage(self.log.branch)):
            b = self.db.branch(name)
            if b.parent is None:
                continue
            step = 0
            for rec in self.log.events:
                if rec.seq > b.fork_seq:
                    break
                step = step_of(rec)
            out.append((name, step))
        return out

    def start(self, snapshot: RecordedEvent | None) -> Position | None:
        """Wire the trainer and restore `snapshot` (None: from the run's very start)."""
        t = self.trainer
        upto = snapshot.seq if snapshot is not None else 0
        t.wire(_MatchingBus(self, self.config.lifecycle, upto))
        if not self.recorded:
            orchestrator = t.orchestrator
            assert orchestrator is not None
            orchestrator.arrange = lambda queue, step: self.decisions.arrange(
                orchestrator, queue, step
            )
        if snapshot is None:
            self._set_ids(0)
            return None
        return self._restore(snapshot)

    def _restore(self, snap_rec: RecordedEvent) -> Position:
        t = self.trainer
        event = snap_rec.event
        assert isinstance(event, ev.Checkpointed) and event.snapshot
        after = 0
        for rec in self.log.events:
            if rec.seq > snap_rec.seq:
                break
            t.projector.apply_visible(rec.seq, rec.event, after=after)
            after = rec.seq
        snap = read_snapshot(self.db, event.snapshot)
        t.model.load_state_dict(snap["model"])
        t.optimizer.load_state_dict(snap["optimizer"])
        restore_rng_state(decode_rng_state(snap["rng"]))
        grads = snap["grads"]
        for name, param in t.model.named_parameters():
            param.grad = to_device(grads.get(name), param.device)
        x, pos = snap["extra"], snap["position"]
        t.step, t.epoch = int(pos["step"]), int(pos["epoch"])
        t.train_loss_history = list(x["train_loss_history"])
        t.val_loss_history = list(x["val_loss_history"])
        t.val_accuracy_history = list(x["val_accuracy_history"])
        t.last_decision_step = x["last_decision_step"]
        t.decisions_this_epoch = int(x["decisions_this_epoch"])
        t.recent_losses.clear()
        t.recent_losses.extend(x["recent_losses"])
        t.driver.contributions = dict(x["contributions"])
        t.seed_telemetry.signals = {}
        for seed, (first, ema_with, ema_without, updates) in x["signals"].items():
            t.seed_telemetry.signals[seed] = SeedSignal(
                t.seed_telemetry.decay, first, ema_with, ema_without, int(updates)
            )
        t.batches_done = int(x["batches_done"])
        t.epoch_losses = list(x["epoch_losses"])
        self._check_restored(snap_rec)
        self.log.seek(snap_rec.seq)
        self.log.last_seq = snap_rec.seq
        self.from_snapshot = snap_rec.seq
        phase = x["phase"]
        upto = snap_rec.seq if phase == "facts" else self._group_end(snap_rec)
        self._set_ids(upto)
        pending = "recorded" if self.recorded else ("lifecycle" if phase == "facts" else "none")
        # Epoch 0 is the start boundary alone (a rollback to it): training goes on with epoch 1.
        epoch = max(t.epoch, 1)
        return Position(epoch, t.batches_done, tuple(t.epoch_losses), pending)

    def _check_restored(self, rec: RecordedEvent) -> None:
        """The restored state must be the one its `Checkpointed` recorded (a forged snapshot)."""
        event = rec.event
        assert isinstance(event, ev.Checkpointed)
        t = self.trainer
        fingerprint, tensors = fingerprint_with_digests(t.model.state_dict())
        what = []
        if fingerprint != event.fingerprint:
            keys = sorted(set(tensors) | set(event.tensors))
            differ = [k for k in keys if tensors.get(k) != event.tensors.get(k)]
            what.append(f"model fingerprint differs (tensors: {', '.join(differ)})")
        if optimizer_fingerprint(t.optimizer) != event.optimizer_fingerprint:
            what.append("optimizer fingerprint differs")
        if rng_digest() != event.rng:
            what.append("RNG state differs")
        if what:
            raise TamperDetected(
                rec.seq,
                f"snapshot {event.snapshot} does not restore the state its Checkpointed "
                f"recorded: {'; '.join(what)}",
            )

    def _group_end(self, rec: RecordedEvent) -> int:
        step, last = step_of(rec), rec.seq
        for other in self.log.events[self.log.index_of(rec.seq) :]:
            if step_of(other) != step:
                break
            last = other.seq
        return last

    def _set_ids(self, upto: int | None) -> None:
        """Id counters as the run left them at `upto`, prefixes of the step's branch."""
        t = self.trainer
        counts = self.log.id_counts(upto)
        branches = [MAIN] + [name for name, _ in self._forks]
        for purpose, source in t.id_sources.items():
            prefixes = {t._ids(purpose, b).prefix for b in branches}
            source._count = max([source._count] + [counts.get(p, 0) for p in prefixes])
        self.before_boundary(t)

    def _bump(self, rec: RecordedEvent) -> None:
        t = self.trainer
        counts: dict[str, int] = {}
        count_id(rec.causation_id, counts)
        branches = [MAIN] + [name for name, _ in self._forks]
        for purpose, source in t.id_sources.items():
            for b in branches:
                n = counts.get(t._ids(purpose, b).prefix)
                if n is not None and n > source._count:
                    source._count = n

    # --- the trainer's side (ReplaySource) -------------------------------------------------

    def before_boundary(self, trainer: Trainer) -> None:
        """Pass the log's administrative events; ids with the prefixes of this step's branch.

        A stop, resume or rollback recorded facts with the trainer's ids that the re-executed
        run does not issue; the live run that went on after them counted past those ids.
        """
        if self.live:
            return
        log = self.log
        while (rec := log.peek()) is not None and rec.seq in log.admin:
            log.take()
            log.last_seq = rec.seq
            self._bump(rec)
        if self.then_live and log.exhausted():
            # Live before the boundary's facts are built, so that its checkpoint writes the
            # snapshot the uninterrupted run wrote (SPEC §6: the resumed log is the same).
            self.go_live(trainer)
            return
        branch = MAIN
        for name, fork_step in self._forks:
            if trainer.step > fork_step:
                branch = name
        trainer.use_branch_ids(branch)
        if not self.recorded and trainer.orchestrator is not None:
            self.decisions.before_boundary(trainer.orchestrator, trainer.step)

    def after_boundary(self, trainer: Trainer) -> None:
        """Recomputed mode: apply the log's `KernelCompiled` facts left in this boundary."""
        log = self.log
        while (rec := log.peek()) is not None and (
            isinstance(rec.event, ev.KernelCompiled) and step_of(rec) == trainer.step
        ):
            log.take()
            trainer.project(rec.seq)
            log.last_seq = rec.seq

    def apply_boundary(self, trainer: Trainer) -> bool:
        """Recorded mode: apply the log's events of this step; True once nothing is left."""
        log = self.log
        while (rec := log.peek()) is not None:
            step = step_of(rec)
            if step > trainer.step:
                break
            if step < trainer.step:
                raise Divergence(
                    rec.seq,
                    step,
                    f"the log has a boundary at step {step}, but the replay is at step "
                    f"{trainer.step} (different data or batch size?)",
                )
            log.take()
            if isinstance(rec.event, ev.Checkpointed):
                self.check(rec)
            trainer.projector.apply_visible(rec.seq, rec.event, after=log.last_seq)
            log.last_seq = rec.seq
            if isinstance(rec.event, ev.SeedTrainingStarted):
                trainer.seed_telemetry.reset(rec.event.seed)
        return log.peek() is None

    def check(self, rec: RecordedEvent) -> None:
        """A recorded `Checkpointed` against the live model, optimizer and RNGs."""
        e = rec.event
        assert isinstance(e, ev.Checkpointed)
        if self.on_check is not None:
            self.on_check(rec)
        t = self.trainer
        fingerprint, tensors = fingerprint_with_digests(t.model.state_dict())
        if t.ranks is not None:
            t.ranks.agree(fingerprint)
        if fingerprint != e.fingerprint:
            keys = sorted(set(tensors) | set(e.tensors))
            differ = [k for k in keys if tensors.get(k) != e.tensors.get(k)]
            raise Divergence(
                rec.seq,
                e.step,
                "model fingerprint differs",
                tensors=differ,
                recorded=e.fingerprint,
                recomputed=fingerprint,
            )
        opt = optimizer_fingerprint(t.optimizer)
        if opt != e.optimizer_fingerprint:
            raise Divergence(
                rec.seq, e.step, "optimizer fingerprint differs",
                recorded=e.optimizer_fingerprint, recomputed=opt,
            )  # fmt: skip
        rng = rng_digest()
        if rng != e.rng:
            differ = sorted(k for k in set(rng) | set(e.rng) if rng.get(k) != e.rng.get(k))
            raise Divergence(
                rec.seq, e.step, f"RNG state differs: {', '.join(differ)}",
                recorded=e.rng, recomputed=rng,
            )  # fmt: skip
        self.checked += 1

    def match(self, stream: str, ne: NewEvent) -> int:
        """Recomputed mode: the recorded event `ne` must equal; returns its seq."""
        log, step = self.log, self.trainer.step
        skipped, rec = log.next_match(ne.event)
        if rec is None:
            raise Divergence(
                log.last_seq + 1,
                step,
                f"recomputed {ne.event.TYPE} the log does not have",
                recomputed=ev.to_payload(ne.event),
            )
        got = dict(ev.to_payload(ne.event))
        want = dict(rec.payload)
        if isinstance(ne.event, ev.Checkpointed):
            got["snapshot"] = want.get("snapshot")
        if isinstance(ne.event, ev.RunStarted):
            got["environment"], got["run_id"] = want.get("environment"), want.get("run_id")
            # A key added to the config since the run was recorded takes the value that
            # keeps what the run computed: the recorded config, read now, is the same config.
            want["config"] = config_from_record(want["config"]).to_dict()
        same = (
            rec.type == ne.event.TYPE
            and rec.stream == stream
            and canonical_json(got) == canonical_json(want)
        )
        if not same:
            tensors: list[str] = []
            if isinstance(ne.event, ev.Checkpointed) and rec.type == "Checkpointed":
                a, b = want.get("tensors", {}), got.get("tensors", {})
                tensors = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise Divergence(
                rec.seq,
                step_of(rec),
                f"recorded {rec.type} on {rec.stream}, recomputed {ne.event.TYPE} on {stream}",
                tensors=tensors,
                recorded=want,
                recomputed=got,
            )
        if (rec.event_id, rec.causation_id, rec.correlation_id) != (
            ne.event_id,
            ne.causation_id,
            ne.correlation_id,
        ):
            raise Divergence(
                rec.seq, step_of(rec), f"{rec.type}: ids differ",
                recorded=[rec.event_id, rec.causation_id, rec.correlation_id],
                recomputed=[ne.event_id, ne.causation_id, ne.correlation_id],
            )  # fmt: skip
        for _ in skipped:
            log.take()
        log.take()
        if isinstance(ne.event, ev.Checkpointed):
            self.checked += 1
        log.last_seq = rec.seq
        return rec.seq

    def exhausted(self) -> bool:
        """Recomputed mode: nothing but administrative events left to match."""
        return self.log.exhausted()

    def finished(self) -> bool:
        """The re-execution is over (it does not go on live)."""
        return not self.then_live and self.log.exhausted()

    def go_live(self, trainer: Trainer) -> None:
        """The log is used up: commit from now on (resume), else the recomputation diverged."""
        if not self.then_live:
            raise Divergence(
                self.log.last_seq + 1,
                trainer.step,
                "the recomputed run issues commands past the end of the log",
            )
        self.commit_live(self.log.branch)

    def commit_live(self, branch: str) -> None:
        """From now on the trainer decides and appends to `branch` (resume, a new branch)."""
        trainer = self.trainer
        self.live = True
        bus = CommandBus(self.db, self.config.lifecycle, branch=branch)
        trainer.bus = bus
        assert trainer.orchestrator is not None
        trainer.orchestrator.bus = bus
        trainer.orchestrator.arrange = None
        self._set_ids(None)
        trainer.use_branch_ids(branch)
        trainer.writes_snapshots = True
        trainer.measures_telemetry = True
        trainer.replay_source = None

    def run(self, epochs: int, at: Position | None) -> bool:
        """Re-execute (and, resuming, continue) up to the end of `epochs`; True if stopped."""
        t = self.trainer
        if at is None:
            if self.recorded:
                t.step = 0
                if self.apply_boundary(t):
                    return False
            else:
                t._start_boundary()
                if self.finished():
                    return False
        elif self.recorded and self.log.peek() is None:
            return False
        return t.train_from(epochs, at)
