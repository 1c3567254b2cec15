"""The log path's share: training with the full event log and checkpoints ÷ logging off.

What "logging off" means here, explicitly: the same run (the built-in default, `esper-es
train`), with the time spent in the log path taken out. The log path is everything that exists
only to record the run: deciding and appending commands through the `CommandBus` (SQLite
transactions, WAL + synchronous=FULL, schema validation, hash chain, audit lines), reading the
new events back, and every checkpoint (model and optimizer fingerprints, per-tensor digests,
RNG digests, content-addressed snapshots). What is *not* in it: the training steps, the
validation passes, the lifecycle driver's measurements and the projector applying events to the
model, since a run without a log still has to train, measure and change its architecture.

Each repetition trains once with timers around those calls; its ratio is total ÷ (total - log
path). The median over repetitions is reported. As a cross-check of the storage part, runs
with the database on tmpfs (`/dev/shm`) and on disk are interleaved and their median wall times
compared. (Once B2; B2 is now `b2_framework_overhead.py`, against a plain loop.)

    .venv/bin/python bench/log_path_share.py [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import print_machine, table
from esper_es.config import RunConfig
from esper_es.trainer import boundary
from esper_es.trainer.api import built_in_trainer


class Timers:
    """Accumulated seconds per wrapped call site."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn`, timed into `name`."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

        return timed


def one_run(directory: str, config: RunConfig) -> tuple[float, dict[str, float]]:
    """(wall seconds of `run`, seconds per log-path part) of one default training run."""
    timers = Timers()
    trainer = built_in_trainer(
        config, seed=0, db_path=Path(tempfile.mkdtemp(dir=directory)) / "r.db"
    )
    # `commit` = bus.execute_all + reading back + projecting; projecting is not logging.
    trainer.projector.apply = timers.wrap("project", trainer.projector.apply)  # type: ignore[method-assign]
    commit, checkpoint = boundary.commit, boundary.checkpoint
    boundary.commit = timers.wrap("commit", commit)
    boundary.checkpoint = timers.wrap("checkpoint", checkpoint)
    try:
        t0 = time.perf_counter()
        trainer.run()
        wall = time.perf_counter() - t0
    finally:
        boundary.commit, boundary.checkpoint = commit, checkpoint
    s = timers.seconds
    parts = {
        "commit (bus + SQLite + read back)": s.get("commit", 0.0) - s.get("project", 0.0),
        "checkpoints (fingerprints, digests, snapshots)": s.get("checkpoint", 0.0),
    }
    return wall, parts


def main() -> int:
    """Measure and print the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    config = RunConfig()
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    ratios, walls, logs = [], [], []
    disk_walls, shm_walls = [], []
    with tempfile.TemporaryDirectory() as disk:
        one_run(disk, config)  # warm-up: imports, dataset cache, allocator
        for rep in range(args.reps):
            order = [disk, shm] if rep % 2 == 0 else [shm, disk]
            for where in order:
                if where is None:
                    continue
                with tempfile.TemporaryDirectory(dir=where) as d:
                    wall, parts = one_run(d, config)
                if where == disk:
                    log = sum(parts.values())
                    ratios.append(wall / (wall - log))
                    walls.append(wall)
                    logs.append(parts)
                    disk_walls.append(wall)
                else:
                    shm_walls.append(wall)
    print("## The log path's share of a training run\n")
    print_machine()
    print(f"\nThe default `esper-es train` run ({config.train.epochs} epochs), {args.reps} "
          "repetitions, database on disk; medians.\n")  # fmt: skip
    rows = [["training wall time, full log", f"{statistics.median(walls):.3f} s"]]
    for key in logs[0]:
        rows.append([f"log path: {key}", f"{statistics.median(p[key] for p in logs):.3f} s"])
    rows.append(
        ["**full log ÷ logging off** (target <= 1.03)", f"**{statistics.median(ratios):.3f}**"]
    )
    if shm_walls:
        cross = statistics.median(disk_walls) / statistics.median(shm_walls)
        rows.append(["cross-check: wall on disk ÷ wall on tmpfs", f"{cross:.3f}"])
    table(["measure", "value"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
