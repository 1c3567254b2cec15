"""A resumed run's log is the uninterrupted run's log, apart from the stop's own events.

Compared per event: type, stream and payload, snapshot keys and fingerprints included (a
snapshot key is the content hash of everything it stores, so equal keys mean equal
snapshots). Not compared, because they legitimately differ: `RunStarted.run_id` (each run
draws its own), `recorded_at` (wall clock), the hash chain (covers both), and, after a
Ctrl-C stop, the ids and stream versions of the run stream's later facts: the stop's
`Checkpointed` and `TrainingStopped` took two of the trainer's ids and two versions of that
stream, so the resumed run's later facts come after them. A `kill -9` leaves no stop event,
so there the ids must be equal too (`test_kill.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from replay_support import comparable_log

from esper_es.config import RunConfig
from esper_es.replay import resume
from esper_es.trainer import Trainer, built_in_trainer


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import tomllib

    from replay_support import QUICK

    from esper_es.config import config_from_dict

    path = tmp_path_factory.mktemp("log") / "ref.db"
    built_in_trainer(config_from_dict(tomllib.loads(QUICK)), seed=0, db_path=path).run()
    return path


def interrupt_at(step: int) -> Any:
    """An `on_step` hook that stops the run like Ctrl-C does."""

    def hook(trainer: Trainer, now: int) -> None:
        if now == step:
            raise KeyboardInterrupt

    return hook


@pytest.mark.parametrize("step", [3, 8, 13])
def test_ctrl_c_then_resume_writes_the_uninterrupted_log(
    quick: RunConfig, uninterrupted: Path, tmp_path: Path, step: int
) -> None:
    path = tmp_path / "stopped.db"
    stopped = built_in_trainer(quick, seed=0, db_path=path, on_step=interrupt_at(step)).run()
    assert stopped.interrupted and stopped.steps == step
    resume(path)
    want, got = comparable_log(uninterrupted), comparable_log(path)
    snapshots = [p["snapshot"] for t, _, p in got if t == "Checkpointed" and p["snapshot"]]
    assert len(snapshots) == len([p for t, _, p in want if t == "Checkpointed" and p["snapshot"]])
    first = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), None)
    assert first is None, (want[first], got[first])
    assert len(got) == len(want)
