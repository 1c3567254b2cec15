"""`replay`: re-execute a run from its log alone and check every checkpoint (SPEC §6)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from esper_es.core import events as ev
from esper_es.core.envelope import RecordedEvent
from esper_es.nn.fingerprint import model_fingerprint
from esper_es.replay.session import Session, TrainerFactory
from esper_es.store.backends import open_store
from esper_es.store.records import MAIN
from esper_es.trainer.loop import Trainer

#: The largest epoch count a replay may run to: it stops when the log is used up.
_NO_LIMIT = 1 << 30


@attrs.frozen
class ReplayResult:
    """What a replay reproduced: where it stopped and the model's fingerprint there."""

    run_id: str
    branch: str
    head_seq: int
    fingerprint: str
    checkpoints_checked: int
    steps: int
    from_snapshot: int | None
    recomputed: bool
    environment_differences: list[Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (what `esper-es replay --json` prints)."""
        return attrs.asdict(self)


def replay(
    db_path: str | os.PathLike[str],
    *,
    to_seq: int | None = None,
    branch: str = MAIN,
    recompute_decisions: bool = False,
    allow_env_mismatch: bool = False,
    trainer_factory: TrainerFactory | None = None,
    out: str | os.PathLike[str] | None = None,
    after_restore: Callable[[Trainer], None] | None = None,
    compile: bool | None = None,
) -> ReplayResult:
    """Re-execute `branch` of the run in `db_path` (up to `to_seq`) and check it bit for bit.

    Built-in tasks need nothing but the log. A run whose host and data came from your code
    replays given the same code: `trainer_factory(config, master_seed, db_path)` must build
    the trainer exactly as the original run did (e.g. `make_trainer(MyNet(), ..., config=config,
    seed=master_seed, db_path=db_path)`), without running it.

    With `to_seq` it starts from the nearest earlier snapshot. With `recompute_decisions` the
    lifecycle driver, the controller and the orchestrator run live (from the start) and the
    first command that differs from the log raises `Divergence`. `out` writes the model (see
    `export_model`). `after_restore(trainer)` runs once the start state is in place (a hook
    for tests and debugging). `compile` replays with background compilation on or off
    whatever the run's config said (None: as recorded); the fingerprints are the same.
    Raises `Divergence` (exit 3) or `EnvironmentMismatch` (exit 4).
    """
    started = time.perf_counter()
    if out is not None:
        from esper_es.replay.export import check_writable

        check_writable(out)
    with open_store(db_path, readonly=True) as db:
        session = Session(
            db,
            branch=branch,
            to_seq=to_seq,
            factory=trainer_factory,
            allow_env_mismatch=allow_env_mismatch,
            recorded=not recompute_decisions,
            compile=compile,
        )
        snapshot: RecordedEvent | None = None
        if to_seq is not None and not recompute_decisions:
            snapshot = session.log.latest_snapshot(to_seq)
        at = session.start(snapshot)
        if after_restore is not None:
            after_restore(session.trainer)
        session.run(session.log.completed_epochs() or _NO_LIMIT, at)
        t = session.trainer
        fingerprint = model_fingerprint(t.model)
        head = session.log.last_seq
        if out is not None:
            from esper_es.replay.export import export_model

            export_model(
                out, t.model, run_id=db.run_id, branch=branch, seq=head,
                config=session.started.config, master_seed=session.started.master_seed,
                events=[r for r in session.log.events if r.seq <= head],
            )  # fmt: skip
        return ReplayResult(
            run_id=db.run_id,
            branch=branch,
            head_seq=head,
            fingerprint=fingerprint,
            checkpoints_checked=session.checked,
            steps=t.step,
            from_snapshot=session.from_snapshot,
            recomputed=recompute_decisions,
            environment_differences=[list(d) for d in session.env_differences],
            seconds=time.perf_counter() - started,
        )


def last_checkpoint(db_path: str | Path, branch: str = MAIN) -> ev.Checkpointed | None:
    """The branch's last `Checkpointed` event (its fingerprint is the run's final one)."""
    with open_store(db_path, readonly=True) as db:
        found = None
        for rec in db.read(branch=branch, types=["Checkpointed"]):
            found = rec.event
        assert found is None or isinstance(found, ev.Checkpointed)
        return found


def replay_model(db_path: str | Path, seq: int, branch: str = MAIN) -> dict[str, Any]:
    """`inspect --at`: fingerprint and architecture manifest at `seq` (needs a snapshot)."""
    from esper_es.nn.fingerprint import architecture_manifest

    with open_store(db_path, readonly=True) as db:
        session = Session(db, branch=branch, to_seq=seq)
        snapshot = session.log.latest_snapshot(seq)
        if snapshot is None:
            return {"fingerprint": None, "manifest": None, "unavailable": "no snapshot before"}
        at = session.start(snapshot)
        session.run(_NO_LIMIT, at)
        manifest = architecture_manifest(session.trainer.model)
        return {
            "fingerprint": manifest["fingerprint"],
            "manifest": manifest,
            "from_snapshot": snapshot.seq,
            "seq": session.log.last_seq,
        }
