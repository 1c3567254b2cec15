"""`resume`: continue a stopped, crashed or rolled-back run, bit-identical to an uninterrupted one.

It takes the writer lock, restores the branch's latest snapshot, re-executes the steps logged
since then with the driver, controller and orchestrator running live and every event they
produce matched against the log (so their measurements, histories and id counters end exactly
where the run's were), and then carries on live, appending to the same branch, to the end of
the configured (or `epochs`) epochs. A run killed with SIGKILL loses at most the boundary in
flight; its log ends at a committed boundary, which is where the live part starts again.
"""

from __future__ import annotations

import os
import time

from esper_es.core import events as ev
from esper_es.replay.errors import NotReplayable
from esper_es.replay.session import Session, TrainerFactory
from esper_es.store.backends import open_store
from esper_es.store.protocol import RunStore
from esper_es.trainer.result import TrainResult


def newest_branch(db: RunStore) -> str:
    """The most recently opened branch (main if there was no rollback)."""
    return db.branches()[-1].name


def resume(
    db_path: str | os.PathLike[str],
    *,
    epochs: int | None = None,
    branch: str | None = None,
    trainer_factory: TrainerFactory | None = None,
    allow_env_mismatch: bool = False,
    library: str | None = None,
) -> TrainResult:
    """Continue `branch` (default: the newest) of the run in `db_path`; see the module doc.

    A run already complete to `epochs` is left as it is (the result says so: no new events).
    Kernel outcomes of the continued run go to the shared library `library` when given; the
    path the run recorded is never written to by itself (SPEC §9).
    """
    started = time.perf_counter()
    with open_store(db_path) as db:
        branch = branch or newest_branch(db)
        session = Session(
            db,
            branch=branch,
            factory=trainer_factory,
            allow_env_mismatch=allow_env_mismatch,
            recorded=False,
            then_live=True,
            library=library,
        )
        last = session.log.events[-1].event if session.log.events else None
        if isinstance(last, ev.TrainingStopped) and last.reason == "diverged":
            raise NotReplayable(
                f"branch {branch!r} diverged at step {last.step} (a non-finite loss) and "
                "stopped: continuing it would diverge again at the same step. Start a new run "
                "with a lower learning rate"
            )
        t = session.trainer
        target = epochs if epochs is not None else session.config.train.epochs
        done = session.log.completed_epochs()
        try:
            at = session.start(session.log.latest_snapshot())
            if done is not None and done >= target:
                # Nothing to add; report the run as it stands.
                t.project()
                return t._result(False, started)
            with t._sigint():
                interrupted = session.run(target, at)
        finally:
            t.close_compiler()
            t.close_library()
        return t._result(interrupted, started)
