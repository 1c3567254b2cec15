"""B2b: a growing run ÷ a plain loop training the architecture the run grew into.

The default `esper-es train` run (digits, seed layers, heuristic controller) grows kernels into
its host. What it must cost is in proportion to what those kernels compute: its training time
divided by the time of a plain hand-written loop (`bench/_loops.py`) that trains, from the
start, the final grown architecture (a copy of the run's final model: host plus the kernels it
blends, as they compute in its last step) on the same data, batches, optimizer and epochs.
Variants interleaved in one process (the order alternates every repetition); the ratio is the
median over repetitions of (growing run ÷ plain loop of the same repetition); 1 intra-op
thread. Target (issue 12): ≤ 1.15.

    .venv/bin/python bench/b2b_growth_overhead.py [--reps 5] [--widths 4,64]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

import attrs
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import load_average, print_machine, table
from bench._loops import clocked, digits, plain_loop
from esper_es.config import RunConfig
from esper_es.nn.placement import find_seed_layers
from esper_es.runtime.environment import configure_determinism, pin_threads
from esper_es.trainer.api import built_in_trainer


def default_run(width: int) -> RunConfig:
    """The default run (seeds, heuristic controller) on a host of `width`."""
    c = RunConfig()
    return attrs.evolve(c, host=attrs.evolve(c.host, width=width))


def grow(config: RunConfig, directory: str) -> tuple[float, nn.Module]:
    """(seconds of `Trainer.run`, the final model) of one growing run."""
    trainer = built_in_trainer(
        config, seed=0, db_path=Path(tempfile.mkdtemp(dir=directory)) / "r.db"
    )
    return trainer.run().seconds, trainer.model


def grown(model: nn.Module) -> str:
    """The kernels of `model` by stage, e.g. `FOSSILIZED 2, TRAINING 1`."""
    stages: Counter[str] = Counter()
    for layer in find_seed_layers(model).values():
        for i in range(layer.num_seeds):
            if layer.kernel(i) is not None:
                stages[layer.stage(i).value] += 1
    return ", ".join(f"{s} {n}" for s, n in sorted(stages.items())) or "none"


def measure(width: int, reps: int, directory: str) -> tuple[list[float], list[float], str]:
    """(growing-run seconds, plain-loop seconds, the grown kernels), interleaved."""
    config = default_run(width)
    data = digits(0)
    _, final = grow(config, directory)  # warm-up, and the architecture it grows
    grew, plain = [], []
    for rep in range(reps):
        for which in ("grow", "plain") if rep % 2 == 0 else ("plain", "grow"):
            if which == "grow":
                grew.append(grow(config, directory)[0])
            else:
                plain.append(clocked(plain_loop(copy.deepcopy(final), data, config, 0))[0])
    return grew, plain, grown(final)


def main() -> int:
    """Measure and print the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--widths", default="4,64")
    args = ap.parse_args()
    pin_threads(1, None)
    configure_determinism()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for w in (int(x) for x in args.widths.split(",")):
            grew, plain, kernels = measure(w, args.reps, d)
            ratios = [a / b for a, b in zip(grew, plain, strict=True)]
            rows.append([
                f"width {w}", kernels, f"{statistics.median(grew):.3f}",
                f"{statistics.median(plain):.3f}",
                f"**{statistics.median(ratios):.3f}** ({min(ratios):.2f}-{max(ratios):.2f})",
            ])  # fmt: skip
    print("## B2b: a growing run ÷ a plain loop of the grown architecture\n")
    print_machine()
    print(f"\n{args.reps} interleaved repetitions after a warm-up; medians; in brackets the "
          "spread of the per-repetition ratios. "
          f"Load average at the end: {load_average()}.\n")  # fmt: skip
    table(
        ["host", "kernels at the end", "growing run s", "plain loop s", "ratio (target ≤ 1.15)"],
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
