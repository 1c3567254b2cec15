"""`rollback`: open a branch whose state is exactly the state at a seq; nothing is rewritten.

*The state at SEQ* is the state between two step boundaries: the model, optimizer, RNGs, data
position and the trainer's histories after the boundary whose events end at SEQ. A boundary's
events are one transaction, so a seq inside one names no state training was ever in; such a
SEQ is refused (exit 2) naming the nearest valid seqs: the ends of the boundaries around it.

The state is recomputed from the nearest earlier snapshot (the driver, controller and
orchestrator re-run and are matched against the log, see `esper_es.replay.session`), then a
new branch `b1`, `b2`, … forking at SEQ is opened and gets its first events: `RunRolledBack`
and a `Checkpointed` with a snapshot of that state, which is where `resume` starts.
"""

from __future__ import annotations

import os
from typing import Any

from esper_es.core import events as ev
from esper_es.nn.fingerprint import model_fingerprint
from esper_es.replay.errors import InvalidRollbackPoint
from esper_es.replay.log import RecordedLog, step_of
from esper_es.replay.session import Session, TrainerFactory
from esper_es.store.backends import open_store
from esper_es.store.protocol import RunStore

_NO_LIMIT = 1 << 30


def boundary_ends(log: RecordedLog) -> list[int]:
    """The seqs that end a step boundary on the log's branch (valid rollback targets)."""
    out = []
    for i, rec in enumerate(log.events):
        nxt = log.events[i + 1] if i + 1 < len(log.events) else None
        if nxt is None or step_of(nxt) != step_of(rec):
            out.append(rec.seq)
    return out


def epoch_end(db_path: str | os.PathLike[str], epoch: int, branch: str | None = None) -> int:
    """The seq that ends the boundary where `epoch` ended on `branch` (default: the newest).

    What `rollback --to-epoch` targets: the state after that epoch's last step, whatever the
    seqs of the run happen to be (they depend on what the controller did).
    """
    with open_store(db_path, readonly=True) as db:
        name = branch or db.branches()[-1].name
        log = RecordedLog(db, name)
        steps = [
            step_of(rec)
            for rec in log.events
            if rec.type == "EpochCompleted" and rec.payload.get("epoch") == epoch
        ]
        if not steps:
            done = sorted(
                {int(r.payload["epoch"]) for r in log.events if r.type == "EpochCompleted"}
            )
            raise InvalidRollbackPoint(
                f"epoch {epoch} did not end on branch {name}; epochs that did: "
                f"{', '.join(str(e) for e in done if e > 0) or 'none'}"
            )
        step_at = {rec.seq: step_of(rec) for rec in log.events}
        return [s for s in boundary_ends(log) if step_at[s] == steps[-1]][-1]


def _parent_of(db: RunStore, seq: int) -> str:
    row = db.event_at(seq)
    if row is None:
        raise InvalidRollbackPoint(f"no event at seq {seq} (head is {db.head()[0]})")
    return str(row[3])


def _next_name(db: RunStore) -> str:
    names = {b.name for b in db.branches()}
    n = 1
    while f"b{n}" in names:
        n += 1
    return f"b{n}"


def rollback(
    db_path: str | os.PathLike[str],
    to_seq: int,
    *,
    branch: str | None = None,
    trainer_factory: TrainerFactory | None = None,
    allow_env_mismatch: bool = False,
) -> dict[str, Any]:
    """Open a branch at `to_seq` (of `branch`, default the branch that wrote it); see above."""
    with open_store(db_path) as db:
        parent = branch or _parent_of(db, to_seq)
        full = RecordedLog(db, parent)
        ends = boundary_ends(full)
        if to_seq not in ends:
            before = [s for s in ends if s < to_seq]
            after = [s for s in ends if s > to_seq]
            near = ", ".join(str(s) for s in (before[-1:] + after[:1]))
            raise InvalidRollbackPoint(
                f"seq {to_seq} is not the end of a step boundary on branch {parent} (a "
                f"boundary's events are one transaction, with no state between them); "
                f"nearest valid seqs: {near}"
            )
        session = Session(
            db,
            branch=parent,
            to_seq=to_seq,
            factory=trainer_factory,
            allow_env_mismatch=allow_env_mismatch,
            recorded=False,
        )
        at = session.start(session.log.latest_snapshot(to_seq))
        done = session.log.completed_epochs()
        session.run(done or _NO_LIMIT, at)
        t = session.trainer
        name = _next_name(db)
        db.open_branch(name, parent, to_seq)
        session.commit_live(name)
        step = step_of(session.log.events[-1])
        # After a run's last boundary the lifecycle part never ran: a resume with more epochs
        # must still run it, as for a checkpoint taken while a boundary's facts are built.
        phase = "facts" if done is not None else "after"
        t._commit(
            [
                t._fact(ev.RunRolledBack(
                    epoch=t.epoch, step=step, from_branch=parent, branch=name, to_seq=to_seq
                )),
                t._checkpoint(t.epoch, snapshot=True, phase=phase),
            ]
        )  # fmt: skip
        return {
            "run_id": db.run_id,
            "branch": name,
            "from_branch": parent,
            "to_seq": to_seq,
            "step": step,
            "epoch": t.epoch,
            "head_seq": db.head_seq(name),
            "fingerprint": model_fingerprint(t.model),
            "branches": [
                {"name": b.name, "parent": b.parent, "fork_seq": b.fork_seq} for b in db.branches()
            ],
        }
