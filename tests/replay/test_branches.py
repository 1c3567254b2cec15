"""A branch has its whole past (SPEC §6): rollback to SEQ, resume, and the parent's end.

Over `tests/fixtures/branch_run.toml` (seeds germinate, are culled, released, fossilize):
rolling back to a boundary and resuming with nothing changed must end on the parent's final
fingerprint, so everything the continuation reads (seed states, kernel outcomes and library
statistics, controller telemetry, id counters, decisions this epoch) must be as it was at SEQ.
The fast test takes every boundary with a kernel outcome; the slow one every boundary.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from replay_support import copy_db

from esper_es.config import config_from_dict
from esper_es.replay import replay, resume, rollback
from esper_es.replay.log import RecordedLog, step_of
from esper_es.replay.rollback import boundary_ends
from esper_es.store.database import RunDatabase
from esper_es.trainer import built_in_trainer

CONFIG = Path(__file__).resolve().parents[1] / "fixtures" / "branch_run.toml"
OUTCOMES = {"SeedCulled", "SeedFossilized", "SeedReleased", "SeedRolledBack", "SeedCancelled"}


@pytest.fixture(scope="module")
def branch_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The run, never rolled back, and its final fingerprint."""
    config = config_from_dict(tomllib.loads(CONFIG.read_text("utf-8")))
    path = tmp_path_factory.mktemp("branches") / "run.db"
    return path, built_in_trainer(config, seed=0, db_path=path).run().fingerprint


def _boundaries(path: Path) -> tuple[list[int], set[int]]:
    """Every boundary end on main, and the steps at which a kernel left its seed."""
    with RunDatabase.open(path, readonly=True) as db:
        log = RecordedLog(db, "main")
        outcome_steps = {step_of(r) for r in log.events if r.type in OUTCOMES}
        return boundary_ends(log), outcome_steps


def _around_outcomes(path: Path) -> list[int]:
    """The end of each boundary with a kernel outcome: the fork has the outcome in its past."""
    ends, outcome_steps = _boundaries(path)
    with RunDatabase.open(path, readonly=True) as db:
        steps = {r.seq: step_of(r) for r in RecordedLog(db, "main").events}
    picked: set[int] = set()
    for seq in ends[:-1]:
        if steps[seq] in outcome_steps:
            picked.add(seq)
    return sorted(picked)


def _rollback_and_resume(run: Path, seq: int, tmp_path: Path) -> str:
    db = copy_db(run, tmp_path / f"at-{seq}.db")
    rollback(db, seq)
    return resume(db).fingerprint


def test_the_run_has_culls_releases_and_fossils(branch_run: tuple[Path, str]) -> None:
    path, _ = branch_run
    with RunDatabase.open(path, readonly=True) as db:
        types = {r.type for r in db.read()}
    assert {"SeedCulled", "SeedReleased", "SeedFossilized"} <= types


def test_rollback_at_every_kernel_outcome_then_resume_equals_the_parent(
    branch_run: tuple[Path, str], tmp_path: Path
) -> None:
    path, fingerprint = branch_run
    seqs = _around_outcomes(path)
    assert len(seqs) >= 5
    differ = [s for s in seqs if _rollback_and_resume(path, s, tmp_path) != fingerprint]
    assert differ == []


@pytest.mark.slow
def test_rollback_to_every_boundary_then_resume_equals_the_parent(
    branch_run: tuple[Path, str], tmp_path: Path
) -> None:
    path, fingerprint = branch_run
    ends, _ = _boundaries(path)
    differ = [s for s in ends[:-1] if _rollback_and_resume(path, s, tmp_path) != fingerprint]
    assert differ == []


def test_a_branch_of_a_branch_sees_both_parents(
    branch_run: tuple[Path, str], tmp_path: Path
) -> None:
    """main -> b1 (forked before the first cull) -> b2 (forked on b1 after it)."""
    path, fingerprint = branch_run
    ends, outcome_steps = _boundaries(path)
    with RunDatabase.open(path, readonly=True) as handle:
        steps = {r.seq: step_of(r) for r in RecordedLog(handle, "main").events}
    first = min(outcome_steps)
    early = [s for s in ends if steps[s] < first][-1]
    db = copy_db(path, tmp_path / "nested.db")
    rollback(db, early)
    assert resume(db).fingerprint == fingerprint
    with RunDatabase.open(db, readonly=True) as handle:
        b1 = RecordedLog(handle, "b1")
        fork = handle.branch("b1").fork_seq
        later = [
            s for s in boundary_ends(b1) if s > fork and step_of(b1.events[b1.index_of(s)]) > first
        ]
    opened = rollback(db, later[len(later) // 2])
    assert opened["from_branch"] == "b1" and opened["branch"] == "b2"
    assert resume(db).fingerprint == fingerprint
    assert replay(db, branch="b2").fingerprint == fingerprint
