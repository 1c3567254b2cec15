"""B6: full replay time ÷ original training time, and `replay --to SEQ` from a snapshot.

The original is the built-in default run (`esper-es train`, digits, 12 epochs, seeds
germinated by the heuristic controller); the replay re-executes it from its log alone
(`esper_es.replay.replay`, recorded mode), checking every `Checkpointed`. In-process: both run
in this process, side by side, the median over repetitions reported (target <= 0.8).
Through the command line: `esper-es train` and `esper-es replay` wall time in fresh processes,
start-up included (target <= 1.05).

`replay --to SEQ`: SEQ is the last event before the run's final checkpoint, so the replay
starts from the previous epoch's snapshot and re-executes the steps since; its time is
compared with 0.1 s + those steps at the original run's time per step (the target).

    .venv/bin/python bench/b6_replay.py [--reps 3] [--epochs 12]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import attrs

from bench._common import print_machine, table
from esper_es.config import RunConfig
from esper_es.replay import replay
from esper_es.store.database import RunDatabase
from esper_es.trainer.api import built_in_trainer


def one(root: Path, i: int, epochs: int) -> tuple[float, float, float, int, int]:
    """(train s, full replay s, replay --to s, steps since the snapshot, steps) of one run."""
    config = RunConfig()
    config = attrs.evolve(config, train=attrs.evolve(config.train, epochs=epochs))
    db = root / f"run{i}.db"
    t0 = time.perf_counter()
    result = built_in_trainer(config, seed=i, db_path=db).run()
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    full = replay(db)
    replay_s = time.perf_counter() - t0
    assert full.fingerprint == result.fingerprint
    with RunDatabase.open(db, readonly=True) as rdb:
        checkpoints = list(rdb.read(types=["Checkpointed"]))
    seq = checkpoints[-1].seq - 1
    t0 = time.perf_counter()
    part = replay(db, to_seq=seq)
    to_s = time.perf_counter() - t0
    snap_step = next(c.payload["step"] for c in checkpoints if c.seq == part.from_snapshot)
    return train_s, replay_s, to_s, part.steps - snap_step, result.steps


def cli_once(root: Path, i: int, epochs: int) -> tuple[float, float]:
    """(train wall s, replay wall s) of `esper-es train` then `esper-es replay`, fresh processes."""
    db = root / f"cli{i}.db"
    cmd = [sys.executable, "-m", "esper_es.cli.main"]
    t0 = time.perf_counter()
    subprocess.run([*cmd, "train", "--db", str(db), "--seed", str(i), "--epochs", str(epochs),
                    "--json"], check=True, capture_output=True)  # fmt: skip
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([*cmd, "replay", str(db), "--json"], check=True, capture_output=True)
    return train_s, time.perf_counter() - t0


def main() -> None:
    """Run B6 and print its table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=12)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [one(Path(tmp), i, args.epochs) for i in range(args.reps)]
        cli = [cli_once(Path(tmp), i, args.epochs) for i in range(args.reps)]
    cli_ratio = statistics.median(r / t for t, r in cli)
    train_s = statistics.median(r[0] for r in runs)
    replay_s = statistics.median(r[1] for r in runs)
    ratio = statistics.median(r[1] / r[0] for r in runs)
    to_s = statistics.median(r[2] for r in runs)
    since, steps = runs[0][3], runs[0][4]
    budget = 0.1 + since * train_s / steps
    print(f"## B6: replay ({args.reps} runs of the default digits run, {args.epochs} epochs)\n")
    print_machine()
    table(
        ["measure", "value", "target", "result"],
        [
            ["original training (s, median)", f"{train_s:.3f}", "", ""],
            ["full replay from the log (s, median)", f"{replay_s:.3f}", "", ""],
            ["full replay ÷ training, in-process (median)", f"{ratio:.3f}", "<= 0.8",
             "met" if ratio <= 0.8 else "missed"],
            ["`esper-es train` wall (s, median, start-up included)",
             f"{statistics.median(t for t, _ in cli):.3f}", "", ""],
            ["`esper-es replay` wall (s, median, start-up included)",
             f"{statistics.median(r for _, r in cli):.3f}", "", ""],
            ["replay ÷ train through the CLI (median)", f"{cli_ratio:.3f}", "<= 1.05",
             "met" if cli_ratio <= 1.05 else "missed"],
            [f"replay --to SEQ from a snapshot, {since} steps since it (s)", f"{to_s:.3f}",
             f"<= {budget:.3f}", "met" if to_s <= budget else "missed"],
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
