"""B10: data-parallel training samples/s on 2 CPU ranks ÷ on 1, with the log's share of each.

Two workloads: the default task (`esper-es train`: DigitsCNN width 4 with seeds and the
heuristic controller), and the same CNN at width 64 with the controller off, whose training
step takes well over 10 ms. Each measurement is a fresh process (`--measure`), because the
ranks of a run are forked before torch starts threads; the repetitions interleave 1 and 2
ranks so that other work on the machine weighs on both alike. Reported: the median samples/s
of each, their ratio, and the share of rank 0's training wall time spent in the log path
(commands through the bus and SQLite, and checkpoints: fingerprints, digests, snapshots; with
2 ranks a checkpoint also waits for the ranks' fingerprint comparison).

Throughput is measured from the start of epoch 2 to the end (epoch 1 pays one-time costs:
the followers building their trainer, torch's lazy imports); the time to the first step is
reported beside it. Samples are the examples trained: one rank trains every example of an
epoch, two ranks half each (`shard_batches`), so with 2 ranks an epoch has half the steps,
each on twice the examples.
Target (SPEC §10): ≥ 1.7 on a model whose step is ≥ 10 ms. On 2 cores shared with other
work, 2 ranks can at best use both cores; the machine's load is printed with the results.

    .venv/bin/python bench/b10_ddp.py [--reps 3] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import load_average, print_machine, table

WORKLOADS = {
    "default task (CNN width 4, growing)": {},
    "CNN width 64, static": {"host": {"width": 64}, "controller": {"enabled": False}},
}


def measure(workload: str, nproc: int, epochs: int) -> dict[str, float]:
    """One run of `workload` on `nproc` ranks: wall seconds, samples, log-path seconds."""
    import attrs

    from esper_es.config import RunConfig, config_from_dict
    from esper_es.trainer import boundary
    from esper_es.trainer.api import built_in_trainer
    from esper_es.trainer.launch import run_ranks, trainer_builder

    base = RunConfig().to_dict()
    for section, values in WORKLOADS[workload].items():
        base[section] = {**base[section], **values}
    config = config_from_dict(base)
    config = attrs.evolve(config, train=attrs.evolve(config.train, epochs=epochs))
    out: dict[str, float] = {}

    def lead() -> int:
        seconds: dict[str, float] = {}

        def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0

            return wrapped

        db = Path(tempfile.mkdtemp()) / "b10.db"
        trainer = built_in_trainer(config, seed=0, db_path=db)
        # The boundary protocol calls these module functions (esper_es.trainer.boundary).
        boundary.commit = timed("commit", boundary.commit)  # type: ignore[assignment]
        boundary.checkpoint = timed("checkpoint", boundary.checkpoint)  # type: ignore[assignment]
        trainer.projector.apply = timed("project", trainer.projector.apply)  # type: ignore[method-assign]
        # Epoch starts (the trainer asks for each epoch's batches once, as it begins).
        starts: list[tuple[float, float, int]] = []
        batches_of = trainer._epoch_batches

        def epoch_batches(epoch: int) -> Any:
            log = seconds.get("commit", 0.0) - seconds.get("project", 0.0)
            starts.append((time.perf_counter(), log + seconds.get("checkpoint", 0.0), trainer.step))
            return batches_of(epoch)

        trainer._epoch_batches = epoch_batches  # type: ignore[method-assign]
        t0 = time.perf_counter()
        trainer.run()
        end = time.perf_counter()
        log_end = seconds.get("commit", 0.0) - seconds.get("project", 0.0)
        log_end += seconds.get("checkpoint", 0.0)
        # Steady state: from the start of epoch 2 (the first epoch pays one-time costs:
        # the followers' trainer, torch's lazy imports, first-touch allocations).
        t_start, log_start, step_start = starts[1]
        n = len(trainer.train_data[0])  # type: ignore[index]
        out.update(
            wall=end - t_start, samples=n // nproc * nproc * (epochs - 1),
            log=log_end - log_start, steps=trainer.step - step_start, startup=starts[0][0] - t0,
        )  # fmt: skip
        return 0

    run_ranks(nproc, lead, trainer_builder())
    return out


def main() -> int:
    """Measure and print the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3, help="at least 2: epoch 1 is warm-up")
    ap.add_argument("--measure", nargs=2, metavar=("WORKLOAD", "NPROC"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]), args.epochs)))
        return 0
    print_machine()
    rows = []
    for workload in WORKLOADS:
        runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        for _ in range(args.reps):
            for nproc in (1, 2):
                cmd = [sys.executable, __file__, "--epochs", str(args.epochs), "--measure",
                       workload, str(nproc)]  # fmt: skip
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[nproc].append(json.loads(done.stdout.strip().splitlines()[-1]))
        rate = {n: statistics.median(r["samples"] / r["wall"] for r in runs[n]) for n in runs}
        share = {n: statistics.median(r["log"] / r["wall"] for r in runs[n]) for n in runs}
        step_ms = statistics.median(1000 * r["wall"] / r["steps"] for r in runs[1])
        startup = {n: statistics.median(r["startup"] for r in runs[n]) for n in runs}
        rows.append([
            workload, f"{step_ms:.1f} ms", f"{rate[1]:.0f}", f"{rate[2]:.0f}",
            f"**{rate[2] / rate[1]:.2f}**", f"{100 * share[1]:.1f} %", f"{100 * share[2]:.1f} %",
            f"{startup[1]:.2f} s / {startup[2]:.2f} s",
        ])  # fmt: skip
    table(
        ["workload", "1-rank wall per step", "samples/s, 1 rank", "samples/s, 2 ranks",
         "2 ranks ÷ 1 (target ≥ 1.7)", "log share, 1 rank", "log share, 2 ranks",
         "to the first step, 1 / 2 ranks"],
        rows,
    )  # fmt: skip
    print(f"\nload average after the runs: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
