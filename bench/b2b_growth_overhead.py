"""B2b: a growing run ÷ a plain loop training the architecture the run grew into.

The default `esper-es train` run (digits, seed layers, heuristic controller) grows kernels into
its host. What it must cost is in proportion to what those kernels compute: its training time
divided by the time of a plain hand-written loop (`bench/_loops.py`) that trains, from the
start, the final grown architecture (a copy of the run's final model: host plus the kernels it
blends, as they compute in its last step) on the same data, batches, optimizer and epochs.
What a run grows, and so the plain loop it is compared with, depends on its master seed: a
run that ends with a kernel still in TRAINING or just culled paid for it and has nothing of it
in the denominator. So each of several master seeds (`--seeds`) is its own comparison, and the
figure is the median of their ratios. Per seed the variants are interleaved in one process (the
order alternates every repetition); its ratio is the median over repetitions of (growing run ÷
plain loop of the same repetition); 1 intra-op thread. Target (issue 12): ≤ 1.15.

Where a growing run's extra time goes, from wall-clock timers around three trainer functions
(`parts`, microseconds of overhead per call): the seeds' own-loss passes (with the signal
measurement of the default shared pass), the separate seed signal measurements (only under
`signal_pass = "separate"`), and the step boundaries (lifecycle commands, commits,
contributions, validation, checkpoints). They are medians over the growing runs, in seconds.

    .venv/bin/python bench/b2b_growth_overhead.py [--reps 3] [--widths 4,64] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import adding_time, load_average, print_machine, table
from bench._loops import clocked, digits, plain_loop
from esper_es.config import RunConfig
from esper_es.nn.placement import find_seed_layers
from esper_es.nn.telemetry import SeedTelemetry
from esper_es.runtime.environment import configure_determinism, pin_threads
from esper_es.store.database import RunDatabase
from esper_es.trainer import boundary
from esper_es.trainer.api import built_in_trainer
from esper_es.trainer.own_pass import OwnPass

#: (label, owner, attribute) of each timed part; the trainer looks each up at call time.
PARTS: tuple[tuple[str, Any, str], ...] = (
    ("own-loss passes", OwnPass, "run"),
    ("separate signal measurements", SeedTelemetry, "observe_all"),
    ("boundaries", boundary, "after_step"),
)


@contextmanager
def parts() -> Iterator[Counter[str]]:
    """Seconds spent in each of `PARTS` while the block runs."""
    spent: Counter[str] = Counter()
    saved = [(owner, name, getattr(owner, name)) for _, owner, name in PARTS]

    try:
        for (label, owner, name), (_, _, fn) in zip(PARTS, saved, strict=True):
            setattr(owner, name, adding_time(spent, label, fn))
        yield spent
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def default_run(width: int) -> RunConfig:
    """The default run (seeds, heuristic controller) on a host of `width`."""
    c = RunConfig()
    return attrs.evolve(c, host=attrs.evolve(c.host, width=width))


def grow(config: RunConfig, directory: str, seed: int) -> tuple[float, nn.Module, Path]:
    """(seconds of `Trainer.run`, the final model, its run database) of one growing run."""
    path = Path(tempfile.mkdtemp(dir=directory)) / "r.db"
    trainer = built_in_trainer(config, seed=seed, db_path=path)
    return trainer.run().seconds, trainer.model, path


#: The columns of the kernel-work table.
WORK = (
    "own-pass steps, kept",
    "own-pass steps, discarded",
    "blended steps, kept",
    "blended steps, discarded",
    "plain loop",
)

#: Events that end a seed's kernel (FOSSILIZED keeps it to the end of the run).
_ENDS = ("SeedCulled", "SeedCancelled", "SeedRolledBack")


def kernel_steps(path: Path) -> Counter[str]:
    """Steps of kernel work in a growing run, read from its log: own-pass steps (TRAINING) and
    blended steps (GRAFTING on), each for the kernels it kept or discarded; `plain loop`, the
    blended steps of the plain loop of the grown architecture (its kernels, every step)."""
    work: Counter[str] = Counter()
    db = RunDatabase.open(path)
    try:
        events = [(e.stream, e.type, e.payload) for e in db.read()]
    finally:
        db.close()
    end = max(int(p["step"]) for s, t, p in events if t == "EpochCompleted")
    open_since: dict[str, dict[str, int]] = {}
    for stream, kind, payload in events:
        if not stream.startswith("seed:"):
            continue
        step = int(payload.get("step", 0))
        if kind == "SeedTrainingStarted":
            open_since[stream] = {"training": step}
        elif kind == "SeedGraftingStarted":
            open_since[stream]["blended"] = step
        elif kind in _ENDS and stream in open_since:
            _close(work, open_since.pop(stream), step, "discarded")
    for since in open_since.values():
        _close(work, since, end, "kept")
    work["plain loop"] = end * work["grown kernels"]
    return work


def _close(work: Counter[str], since: dict[str, int], step: int, fate: str) -> None:
    blended_from = since.get("blended", step)
    work[f"own-pass steps, {fate}"] += blended_from - since["training"]
    work[f"blended steps, {fate}"] += step - blended_from
    if fate == "kept" and "blended" in since:
        work["grown kernels"] += 1


def grown(model: nn.Module) -> str:
    """The kernels of `model` by stage, e.g. `FOSSILIZED 2, TRAINING 1`."""
    stages: Counter[str] = Counter()
    for layer in find_seed_layers(model).values():
        for i in range(layer.num_seeds):
            if layer.kernel(i) is not None:
                stages[layer.stage(i).value] += 1
    return ", ".join(f"{s} {n}" for s, n in sorted(stages.items())) or "none"


def measure(
    width: int, seed: int, reps: int, directory: str
) -> tuple[list[float], list[float], str, list[Counter[str]], Counter[str]]:
    """(growing-run seconds, plain-loop seconds, the grown kernels, their parts, the kernel
    work) of master seed `seed`, interleaved."""
    config = default_run(width)
    data = digits(seed)
    _, final, path = grow(config, directory, seed)  # warm-up, and the architecture it grows
    grew, plain, split = [], [], []
    for rep in range(reps):
        for which in ("grow", "plain") if rep % 2 == 0 else ("plain", "grow"):
            if which == "grow":
                with parts() as spent:
                    grew.append(grow(config, directory, seed)[0])
                split.append(spent)
            else:
                plain.append(clocked(plain_loop(copy.deepcopy(final), data, config, seed))[0])
    return grew, plain, grown(final), split, kernel_steps(path)


def main() -> int:
    """Measure and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--widths", default="4,64")
    ap.add_argument("--seeds", default="0,1,2", help="master seeds, each its own growing run")
    args = ap.parse_args()
    pin_threads(1, None)
    configure_determinism()
    seeds = [int(x) for x in args.seeds.split(",")]
    rows, summary, split_rows, work_rows = [], [], [], []
    with tempfile.TemporaryDirectory() as d:
        for w in (int(x) for x in args.widths.split(",")):
            per_seed = []
            for seed in seeds:
                grew, plain, kernels, split, work = measure(w, seed, args.reps, d)
                work_rows.append([f"width {w}", seed, *(str(work[label]) for label in WORK)])
                ratios = [a / b for a, b in zip(grew, plain, strict=True)]
                per_seed.append(statistics.median(ratios))
                rows.append([
                    f"width {w}", seed, kernels, f"{statistics.median(grew):.3f}",
                    f"{statistics.median(plain):.3f}",
                    f"{per_seed[-1]:.3f} ({min(ratios):.2f}-{max(ratios):.2f})",
                ])  # fmt: skip
                split_rows.append(
                    [f"width {w}", seed, f"{statistics.median(grew):.3f}"]
                    + [f"{statistics.median(s[label] for s in split):.3f}" for label, _, _ in PARTS]
                )
            summary.append([
                f"width {w}", f"**{statistics.median(per_seed):.3f}**",
                f"{min(per_seed):.3f}-{max(per_seed):.3f}",
            ])  # fmt: skip
    print("## B2b: a growing run ÷ a plain loop of the grown architecture\n")
    print_machine()
    print(f"\nMaster seeds {args.seeds}, each its own growing run (what a run grows, and so its "
          f"plain loop, depends on the seed); {args.reps} interleaved repetitions of each after "
          "a warm-up; a seed's ratio is the median of its repetitions' ratios, in brackets their "
          f"spread. Load average at the end: {load_average()}.\n")  # fmt: skip
    table(["host", "median over the seeds (target ≤ 1.15)", "seeds' range"], summary)
    table(
        ["host", "master seed", "kernels at the end", "growing run s", "plain loop s", "ratio"],
        rows,
    )
    print(
        "\nWithin the growing run (s, medians; the signal measured in the own-loss pass, the"
        " default `signal_pass`, is part of that pass):\n"
    )
    table(["host", "master seed", "growing run", *(label for label, _, _ in PARTS)], split_rows)
    print(
        "\nKernel work (steps in which a kernel computes), from the growing run's log: its own"
        " passes and its blended steps, for the kernels it kept and those it culled, against"
        " the plain loop of the grown architecture, whose kernels compute every step:\n"
    )
    table(["host", "master seed", *WORK], work_rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
