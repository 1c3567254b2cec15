"""Data-parallel runs through the command line (SPEC §11): 2 CPU ranks, gloo.

Every run here is a subprocess (`esper-es ... --nproc 2` forks its followers, which must
happen before torch starts threads; this test process has). Kills happen at a known point
inside the run (`ESPER_ES_TEST_KILL`, read by the test factory in `tests/fixtures/ddp_runs.py`),
never after a sleep.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from esper_es.store.database import RunDatabase

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
CLI = [sys.executable, "-m", "esper_es.cli.main"]

#: Short gates so that a 6-epoch run of `ddp_runs:strategies_run` germinates, replaces,
#: specializes, blends and fossilizes.
QUICK = """
[train]
epochs = 4
batch_size = 16
controller_every_steps = 4

[driver]
contribution_examples = 48
fine_tune_steps = 4
evaluation_steps = 2

[lifecycle]
min_training_steps = 4
min_stabilization_steps = 2
embargo_steps = 4

[blending]
ramp_steps = 4
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESPER_ES_TEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(FIXTURES), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def esper(*argv: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `esper-es ARGV` in a subprocess."""
    return subprocess.run(
        [*CLI, *map(str, argv)], cwd=REPO, env=env or _env(), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


def ok(*argv: object, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`esper-es ARGV --json`, which must succeed; its JSON object."""
    done = esper(*argv, "--json", env=env)
    assert done.returncode == 0, done.stderr
    obj: dict[str, Any] = json.loads(done.stdout)
    return obj


def train_script(
    db: Path, epochs: int, config: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Train `ddp_runs:strategies_run` on 2 ranks through the Python API (`run_ranks`)."""
    argv = [sys.executable, str(FIXTURES / "ddp_runs.py"), "ddp_runs:strategies_run", str(db),
            "2", str(epochs), str(config)]  # fmt: skip
    return subprocess.run(
        argv, cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=600
    )


def run_started(db: Path) -> dict[str, Any]:
    """The run's `RunStarted` payload."""
    with RunDatabase.open(db, readonly=True) as rdb:
        (rec,) = list(rdb.read(branch=None, types=["RunStarted"]))
        return dict(rec.payload)


def checkpoints(db: Path, branch: str = "main") -> list[tuple[int, str, str]]:
    """`(step, model fingerprint, optimizer fingerprint)` of every `Checkpointed` on `branch`."""
    with RunDatabase.open(db, readonly=True) as rdb:
        return [
            (r.payload["step"], r.payload["fingerprint"], r.payload["optimizer_fingerprint"])
            for r in rdb.read(branch=branch, types=["Checkpointed"])
        ]


def types(db: Path) -> list[str]:
    """The event types of the main branch, in order."""
    with RunDatabase.open(db, readonly=True) as rdb:
        return [r.type for r in rdb.read(branch="main")]


@pytest.fixture
def quick(tmp_path: Path) -> Path:
    """The short-gates config."""
    path = tmp_path / "quick.toml"
    path.write_text(QUICK, encoding="utf-8")
    return path


def test_two_ranks_train_verify_replay_and_one_rank_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "ddp.db"
    run = ok("train", "--epochs", 2, "--db", db, "--nproc", 2)
    started = run_started(db)
    assert (started["world_size"], started["backend"]) == (2, "gloo")
    assert esper("verify", db).returncode == 0
    replayed = ok("replay", db)  # the world size comes from the log
    assert replayed["fingerprint"] == run["fingerprint"]
    assert replayed["checkpoints_checked"] == len(checkpoints(db)) == 3
    refused = esper("replay", db, "--nproc", 1)
    assert refused.returncode == 4
    assert "world_size: recorded 2, here 1" in refused.stderr
    assert "--nproc 2" in refused.stderr
    # Each rank takes half of every epoch's examples (1 437 digits: 718 each, 23 batches).
    assert run["steps"] == 2 * 23


def test_a_rank_that_differs_stops_the_run_naming_it(tmp_path: Path, quick: Path) -> None:
    db = tmp_path / "nudged.db"
    done = train_script(db, 2, quick, env=_env(ESPER_ES_TEST_NUDGE="3"))
    assert done.returncode == 3, done.stderr
    assert "rank 1 differs from rank 0 at the checkpoint of step 10" in done.stderr
    assert "model fingerprint" in done.stderr
    assert esper("verify", db).returncode == 0
    # The checkpoint the ranks disagreed on was never recorded.
    assert [step for step, _, _ in checkpoints(db)] == [0]


@pytest.mark.slow
def test_strategies_under_ddp_replay_and_a_rollback_reproduces_the_parent(
    tmp_path: Path, quick: Path
) -> None:
    db = tmp_path / "grow.db"
    done = train_script(db, 6, quick)
    assert done.returncode == 0, done.stderr
    fingerprint = done.stdout.split()[-1]
    seen = types(db)
    for kind in ("SeedGerminated", "SeedCulled", "SeedRolledBack", "BlendAdjusted",
                 "SeedFossilized", "SeedReleased"):  # fmt: skip
        assert kind in seen, kind
    with RunDatabase.open(db, readonly=True) as rdb:
        planned = [r.payload["strategy"] for r in rdb.read(types=["AdaptationPlanned"])]
    assert planned == ["diversify", "replace", "specialize"]
    # Every checkpoint compared the two ranks; a difference would have stopped the run (above).
    assert len(checkpoints(db)) == 7
    assert ok("replay", db)["fingerprint"] == fingerprint
    assert ok("replay", db, "--recompute-decisions")["fingerprint"] == fingerprint
    # Roll back to just before the REPLACE decision and resume: the parent, bit for bit.
    with RunDatabase.open(db, readonly=True) as rdb:
        (decided,) = [r.seq for r in rdb.read(types=["AdaptationDecided"])
                      if r.payload["adaptation_type"] == "optimize_parameters"]  # fmt: skip
    branch = ok("rollback", db, "--to", decided - 1)["branch"]
    resumed = ok("resume", db, "--branch", branch)
    assert resumed["fingerprint"] == fingerprint
    assert checkpoints(db, branch)[-5:] == checkpoints(db)[-5:]


@pytest.mark.slow
@pytest.mark.parametrize("rank", [1, 0])
def test_kill_9_of_a_rank_then_resume_is_the_uninterrupted_run(
    tmp_path: Path, quick: Path, rank: int
) -> None:
    whole = tmp_path / "whole.db"
    done = train_script(whole, 4, quick)
    assert done.returncode == 0, done.stderr
    killed = tmp_path / "killed.db"
    # Rank RANK's 27th training loss: mid-step of epoch 3 (10 steps an epoch), past snapshots.
    done = train_script(killed, 4, quick, env=_env(ESPER_ES_TEST_KILL=f"{rank}:27"))
    if rank == 0:
        assert done.returncode == -signal.SIGKILL
    else:
        assert done.returncode == 1 and "lost the other ranks" in done.stderr, done.stderr
    assert esper("verify", killed).returncode == 0
    assert "TrainingStopped" not in types(killed)
    resumed = ok("resume", killed)
    assert resumed["fingerprint"] == done_fingerprint(whole)
    assert checkpoints(killed) == checkpoints(whole)


def done_fingerprint(db: Path) -> str:
    """The model fingerprint of the run's last `Checkpointed`."""
    return checkpoints(db)[-1][1]


@pytest.mark.slow
def test_two_rank_text_run_verifies_replays_and_resumes(tmp_path: Path) -> None:
    config = tmp_path / "text.toml"
    text = (REPO / "configs" / "text.toml").read_text("utf-8")
    config.write_text(
        text.replace("max_train_examples = 2048", "max_train_examples = 512").replace(
            "controller_every_steps = 20", "controller_every_steps = 4"
        ),
        encoding="utf-8",
    )
    db = tmp_path / "text.db"
    run = ok("train", "--config", config, "--epochs", 2, "--db", db, "--nproc", 2)
    assert esper("verify", db).returncode == 0
    assert ok("replay", db)["fingerprint"] == run["fingerprint"]
    # By epoch, not by a literal seq: boundary 0's seqs move with the config's seed layers.
    branch = ok("rollback", db, "--to-epoch", 1)["branch"]
    assert ok("resume", db, "--branch", branch)["fingerprint"] == run["fingerprint"]


@pytest.mark.slow
def test_default_run_on_two_ranks_replays_and_rolls_back(tmp_path: Path) -> None:
    db = tmp_path / "default.db"
    run = ok("train", "--db", db, "--nproc", 2)
    assert "SeedGerminated" in types(db)
    assert ok("replay", db)["fingerprint"] == run["fingerprint"]
    middle = checkpoints(db)[len(checkpoints(db)) // 2]
    with RunDatabase.open(db, readonly=True) as rdb:
        (seq,) = [r.seq for r in rdb.read(types=["Checkpointed"]) if r.payload["step"] == middle[0]]
    branch = ok("rollback", db, "--to", seq)["branch"]
    assert ok("resume", db, "--branch", branch)["fingerprint"] == run["fingerprint"]


@pytest.mark.slow
def test_torchrun_ranks_make_the_same_run_as_nproc(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = Path(sys.executable).with_name("torchrun")
    db = tmp_path / "torchrun.db"
    done = subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", "--master-port", str(port), "-m",
         "esper_es.cli.main", "train", "--epochs", "1", "--db", str(db), "--json"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("{")]
    forked = ok("train", "--epochs", 1, "--db", tmp_path / "forked.db", "--nproc", 2)
    assert json.loads(line)["fingerprint"] == forked["fingerprint"]
    assert ok("replay", db)["fingerprint"] == forked["fingerprint"]


@pytest.mark.slow
def test_three_ranks_record_their_reduction_and_re_execute_with_it(tmp_path: Path) -> None:
    # More than 2 ranks on one machine sum through shared memory in rank order, which gloo's
    # ring does not: the run says so, and its replay reduces the same way.
    shared = tmp_path / "shared.db"
    run = ok("train", "--epochs", 1, "--db", shared, "--nproc", 3)
    assert run_started(shared)["backend"] == "gloo+shm"
    assert ok("replay", shared)["fingerprint"] == run["fingerprint"]
    # A 3-rank run recorded with gloo's all-reduce (as before the shared reduction) replays
    # through gloo again, bit for bit.
    gloo = tmp_path / "gloo.db"
    done = subprocess.run(
        [sys.executable, str(FIXTURES / "gloo_reduction.py"), "train", "--epochs", "1",
         "--db", str(gloo), "--nproc", "3", "--json"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert run_started(gloo)["backend"] == "gloo"
    assert ok("replay", gloo)["fingerprint"] == json.loads(done.stdout)["fingerprint"]
