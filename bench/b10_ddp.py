"""B10: data-parallel training samples/s on 2 CPU ranks ÷ on 1, with the log's share of each.

Two workloads: the default task (`esper-es train`: DigitsCNN width 4 with seeds and the
heuristic controller), and the same CNN at width 128 with the controller off, whose training
step takes over 10 ms on one idle core (width 64 took 6.9 ms). Each measurement is a fresh
process (`--measure`), because the ranks of a run are forked before torch starts threads; the
repetitions interleave 1 and 2 ranks so that other work on the machine weighs on both alike.
Reported: the median samples/s of each, their ratio, and the share of rank 0's training wall
time spent in the log path (commands through the bus and SQLite, and checkpoints:
fingerprints, digests, snapshots; with 2 ranks a checkpoint also waits for the ranks'
fingerprint comparison).

Throughput is measured from the start of epoch 2 to the end (epoch 1 pays one-time costs:
the followers building their trainer, torch's lazy imports); the time to the first step is
reported beside it. Samples are the examples trained: one rank trains every example of an
epoch, two ranks half each (`shard_batches`), so with 2 ranks an epoch has half the steps,
each on twice the examples.

Where a step's time goes (the second table): every rank records, over the same window, its
CPU time (`time.process_time`, all its threads) and, per step, the wall time of the step and
of the gradient all-reduce in it; the follower also the time it waited for rank 0's message.
"cores used" is the ranks' CPU time together ÷ wall time: 2 ranks can only beat 1 if they
get about 2 cores. A synchronous step waits for the slowest rank, so any other busy process
on one of the cores slows both ranks.

The third table runs the same 2 ranks with their gradients reduced by gloo's all-reduce
instead of through shared memory (`runtime.shared_reduce`, the default for CPU ranks on one
machine), interleaved with the others: what the shared reduction changed, under the same load.

Target (SPEC §10): ≥ 1.7 on a model whose step is ≥ 10 ms. The machine's load average is
printed beside each workload's figures.

    .venv/bin/python bench/b10_ddp.py [--reps 3] [--epochs 3] [--only "width 128"]
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

from bench._common import adding_time, load_average, print_machine, table

WORKLOADS = {
    "default task (CNN width 4, growing)": {},
    "CNN width 128, static": {"host": {"width": 128}, "controller": {"enabled": False}},
}


class RankClock:
    """One rank's record of where its steps' time went (kept across the followers' fork)."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, float, float, float]] = []  # wall and CPU, start and end
        self.waits: dict[str, list[tuple[float, float]]] = {"all_reduce": [], "receive": []}

    def wrap_step(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` (one training step), timed on wall and CPU clocks."""

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.steps.append((t0, time.perf_counter(), c0, time.process_time()))

        return wrapped

    def wrap_wait(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` (a collective), timed on the wall clock."""

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.waits[name].append((t0, time.perf_counter()))

        return wrapped

    def since(self, start: float) -> dict[str, float]:
        """Totals over the steps that began at `start` or later (perf_counter is system-wide)."""
        steps = [s for s in self.steps if s[0] >= start]
        if not steps:
            return {}
        out = {"n": len(steps), "cpu": steps[-1][3] - steps[0][2], "wall": steps[-1][1] - start}
        for name, spans in self.waits.items():
            out[name] = sum(b - a for a, b in spans if a >= start)
        return out


def measure(workload: str, variant: str, epochs: int) -> dict[str, Any]:
    """One run of `workload` on `variant`'s ranks ("1", "2", or "2-gloo": 2 ranks reducing
    through gloo): wall seconds, samples, log-path seconds, ranks."""
    import attrs

    from esper_es.runtime import ranks as rank_layer

    nproc = int(variant[0])
    if variant.endswith("gloo"):
        rank_layer.local_reduction = lambda *args, **kwargs: False  # type: ignore[assignment]

    from esper_es.config import RunConfig, config_from_dict
    from esper_es.runtime.ranks import RankGroup
    from esper_es.trainer import boundary, distributed, step
    from esper_es.trainer.api import built_in_trainer
    from esper_es.trainer.launch import run_ranks, trainer_builder

    base = RunConfig().to_dict()
    for section, values in WORKLOADS[workload].items():
        base[section] = {**base[section], **values}
    config = config_from_dict(base)
    config = attrs.evolve(config, train=attrs.evolve(config.train, epochs=epochs))
    out: dict[str, Any] = {}
    scratch = Path(tempfile.mkdtemp())
    # Installed before the followers fork, so every rank times its own steps and collectives.
    clock = RankClock()
    step.train_step = clock.wrap_step(step.train_step)  # type: ignore[assignment]
    for name, method in (("all_reduce", "all_reduce_mean"), ("receive", "receive")):
        setattr(RankGroup, method, clock.wrap_wait(name, getattr(RankGroup, method)))
    serve = distributed.Follower.serve.__func__  # type: ignore[attr-defined]

    def follower_serve(cls: Any, group: RankGroup, build: Any) -> int:
        try:
            return int(serve(cls, group, build))
        finally:
            (scratch / f"rank{group.rank}.json").write_text(json.dumps(clock.steps))
            (scratch / f"waits{group.rank}.json").write_text(json.dumps(clock.waits))

    distributed.Follower.serve = classmethod(follower_serve)  # type: ignore[method-assign,assignment]

    def lead() -> int:
        seconds: dict[str, float] = {}

        def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            return adding_time(seconds, name, fn)

        trainer = built_in_trainer(config, seed=0, db_path=scratch / "b10.db")
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
            window=t_start,
        )  # fmt: skip
        return 0

    run_ranks(nproc, lead, trainer_builder())
    ranks = [clock.since(out["window"])]
    for rank in range(1, nproc):
        clock.steps = [tuple(s) for s in json.loads((scratch / f"rank{rank}.json").read_text())]  # type: ignore[misc]
        clock.waits = json.loads((scratch / f"waits{rank}.json").read_text())
        ranks.append(clock.since(out["window"]))
    out["ranks"] = ranks
    return out


def _run(workload: str, nproc: int | str, epochs: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--epochs", str(epochs), "--measure", workload, str(nproc)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> int:
    """Measure and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3, help="at least 2: epoch 1 is warm-up")
    ap.add_argument("--only", default="", help="the workloads whose name contains this")
    ap.add_argument("--measure", nargs=2, metavar=("WORKLOAD", "NPROC"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], args.measure[1], args.epochs)))
        return 0
    print_machine()
    rows, detail, versus = [], [], []
    for workload in (w for w in WORKLOADS if args.only in w):
        runs: dict[int | str, list[dict[str, Any]]] = {1: [], 2: [], "2-gloo": []}
        load_before = load_average()
        for _ in range(args.reps):
            for nproc in runs:
                runs[nproc].append(_run(workload, nproc, args.epochs))

        def med(
            n: int | str,
            fn: Callable[[dict[str, Any]], float],
            runs: dict[int | str, list[Any]] = runs,
        ) -> float:
            return statistics.median(fn(r) for r in runs[n])

        rate = {n: med(n, lambda r: r["samples"] / r["wall"]) for n in runs}
        share = {n: med(n, lambda r: r["log"] / r["wall"]) for n in runs}
        step_ms = med(1, lambda r: 1000 * r["wall"] / r["steps"])
        startup = {n: med(n, lambda r: r["startup"]) for n in runs}
        loads = f"{load_before} / {load_average()}"
        rows.append([
            workload, f"{step_ms:.1f} ms", f"{rate[1]:.0f}", f"{rate[2]:.0f}",
            f"**{rate[2] / rate[1]:.2f}**", f"{100 * share[1]:.1f} %", f"{100 * share[2]:.1f} %",
            f"{startup[1]:.2f} s / {startup[2]:.2f} s", loads,
        ])  # fmt: skip
        cores = {n: med(n, lambda r: sum(k["cpu"] for k in r["ranks"]) / r["wall"]) for n in runs}
        cpu = {n: med(n, lambda r: 1000 * max(k["cpu"] / k["n"] for k in r["ranks"])) for n in runs}
        wall = {n: med(n, lambda r: 1000 * r["wall"] / r["steps"]) for n in runs}
        reduce = {n: med(n, lambda r: 1000 * r["ranks"][0]["all_reduce"] / r["ranks"][0]["n"])
                  for n in runs}  # fmt: skip
        wait2 = med(2, lambda r: 1000 * r["ranks"][1]["receive"] / r["ranks"][1]["n"])
        wall2, reduce2 = wall[2], reduce[2]
        versus.append([
            workload, f"{rate[2]:.0f} / {rate['2-gloo']:.0f}",
            f"**{rate[2] / rate[1]:.2f}** / {rate['2-gloo'] / rate[1]:.2f}",
            f"{wall[2]:.1f} ms / {wall['2-gloo']:.1f} ms",
            f"{reduce[2]:.1f} ms / {reduce['2-gloo']:.1f} ms",
            f"{cpu[2]:.1f} ms / {cpu['2-gloo']:.1f} ms",
            f"{2 * cpu[1] / cpu[2]:.2f} / {2 * cpu[1] / cpu['2-gloo']:.2f}",
        ])  # fmt: skip
        detail.append([
            workload, f"{cores[1]:.2f} / {cores[2]:.2f}", f"{cpu[1]:.1f} ms / {cpu[2]:.1f} ms",
            f"{step_ms:.1f} ms / {wall2:.1f} ms", f"{reduce2:.1f} ms", f"{wait2:.1f} ms",
            f"**{2 * cpu[1] / cpu[2]:.2f}**",
        ])  # fmt: skip
    table(
        ["workload", "1-rank wall per step", "samples/s, 1 rank", "samples/s, 2 ranks",
         "2 ranks ÷ 1 (target ≥ 1.7)", "log share, 1 rank", "log share, 2 ranks",
         "to the first step, 1 / 2 ranks", "load average before / after (1, 5, 15 min)"],
        rows,
    )  # fmt: skip
    table(
        ["workload", "cores used, 1 / 2 ranks", "CPU per step, 1 rank / busiest of 2",
         "wall per step, 1 / 2 ranks", "all-reduce per step, rank 0 (wall)",
         "rank 1 waiting for rank 0's message, per step", "2 x CPU per step ÷ busiest rank's"],
        detail,
    )  # fmt: skip
    table(
        ["workload (2 ranks: shared memory / gloo)", "samples/s", "2 ranks ÷ 1",
         "wall per step", "all-reduce per step, rank 0 (wall)", "CPU per step, busiest rank",
         "2 x CPU per step ÷ busiest rank's"],
        versus,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
