"""Decisions made by user code (the seed call shape, from other threads) replay bit for bit.

A recorded decision whose source is not the built-in controller has nothing to re-run it:
re-executing (a rollback's recomputation, a resume's tail, `--recompute-decisions`) re-submits
it from the log at its boundary. Every test ends in the uninterrupted run's fingerprint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from replay_support import QUICK, copy_db
from user_decisions import DECISIONS, USER_STEPS, factory

from esper_es.cli.main import main
from esper_es.config import RunConfig
from esper_es.replay import replay, resume, rollback
from esper_es.replay.log import RecordedLog, step_of
from esper_es.replay.rollback import boundary_ends
from esper_es.store.database import RunDatabase
from esper_es.store.verify import verify

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def user_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The quick run with two user decisions from threads, never interrupted."""
    import tomllib

    from esper_es.config import config_from_dict

    path = tmp_path_factory.mktemp("user") / "run.db"
    config = config_from_dict(tomllib.loads(QUICK))
    return path, factory(config, 0, path).run().fingerprint


def _ends(path: Path) -> list[tuple[int, int]]:
    """(seq, step) of every boundary end on main."""
    with RunDatabase.open(path, readonly=True) as db:
        log = RecordedLog(db, "main")
        steps = {r.seq: step_of(r) for r in log.events}
        return [(s, steps[s]) for s in boundary_ends(log)]


def test_user_decisions_are_recorded_at_their_boundaries(user_run: tuple[Path, str]) -> None:
    path, _ = user_run
    with RunDatabase.open(path, readonly=True) as db:
        decided = [r.payload for r in db.read(types=["AdaptationDecided"])]
    user = [(d["step"], d["source"]) for d in decided if d["source"] != "controller"]
    assert user == [(s, "user") for s in USER_STEPS]


def test_recomputing_replay_resubmits_user_decisions(user_run: tuple[Path, str]) -> None:
    path, fingerprint = user_run
    assert replay(path, recompute_decisions=True).fingerprint == fingerprint


def test_rollback_through_user_decisions_then_resume(
    user_run: tuple[Path, str], tmp_path: Path
) -> None:
    """The rollback re-executes from the epoch-1 snapshot through both user decisions."""
    path, fingerprint = user_run
    db = copy_db(path, tmp_path / "run.db")
    target = next(seq for seq, step in _ends(db) if step > USER_STEPS[-1])
    rollback(db, target)  # the built-in factory: no user code runs again
    assert resume(db).fingerprint == fingerprint
    assert replay(db, branch="b1").fingerprint == fingerprint
    assert replay(db, branch="b1", recompute_decisions=True).fingerprint == fingerprint
    verify(db)


def test_rollback_before_user_decisions_then_resume_with_the_same_code(
    user_run: tuple[Path, str], tmp_path: Path
) -> None:
    """Nothing changed: the same user code, resumed from before it acted, acts the same.

    Before its hook ran, that is: a hook runs after its step's boundary, so the state at the
    end of that boundary (a rollback target) already lies after the point it acted at.
    """
    path, fingerprint = user_run
    db = copy_db(path, tmp_path / "run.db")
    target = [seq for seq, step in _ends(db) if step < min(DECISIONS)][-1]
    rollback(db, target, trainer_factory=factory)
    assert resume(db, trainer_factory=factory).fingerprint == fingerprint


def _hang(config: Path, db: Path, step: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    cmd = [sys.executable, str(HERE / "user_decisions.py"), str(config), str(db)]
    return subprocess.Popen(
        [*cmd, "--hang-at", str(step)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=env, text=True,
    )  # fmt: skip


@pytest.mark.parametrize("with_user_code", [False, True])
def test_sigkill_after_user_decisions_then_resume(
    user_run: tuple[Path, str], quick_toml: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], with_user_code: bool,
) -> None:  # fmt: skip
    """Killed after both decisions, before the next snapshot: the resume re-executes them.

    Without user code (the CLI) they come from the log; with it (the same hook in the
    factory), the hook's live tickets stand for the recorded decisions and are not doubled.
    """
    _, fingerprint = user_run
    db = tmp_path / "killed.db"
    proc = _hang(quick_toml, db, USER_STEPS[-1] + 2)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    verify(db)
    if with_user_code:
        assert resume(db, trainer_factory=factory).fingerprint == fingerprint
    else:
        assert main(["resume", str(db), "--json"]) == 0
        obj = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert obj["fingerprint"] == fingerprint
    verify(db)
    assert replay(db).fingerprint == fingerprint


def test_quick_run_config_has_a_snapshot_before_the_user_decisions(quick: RunConfig) -> None:
    """The tests above rely on the epoch-1 snapshot preceding the user decisions."""
    steps = 256 // quick.train.batch_size
    assert quick.train.snapshot_every_epochs == 1 and steps < USER_STEPS[0]
