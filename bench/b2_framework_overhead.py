"""B2: esper-es with no seed layers ÷ a plain hand-written loop, with Lightning alongside.

The built-in digits task (12 epochs, batch 32, Adam), on the width-4 and width-64 CNN hosts,
1 intra-op thread. Variants, each timed on its training part only (model and data built
before the clock starts):

- plain loop: shuffle, step, `loss.item()`, one validation pass per epoch (`bench/_loops.py`);
- Lightning (`pytorch-lightning`, the `bench` extra): a checkpoint after every epoch, no logger;
- esper-es without seeds: `Trainer.run` of the built-in task with no seed layers and no
  controller, database on disk: every boundary, checkpoint, snapshot and commit included.

The variants run interleaved in one process (the order rotates every repetition), so a load
change on the machine hits all of them alike; each ratio is the median over repetitions of
(variant ÷ the plain loop of the same repetition). Target (issue 12): esper-es ≤ 1.03 and below
Lightning on each host.

    .venv/bin/python bench/b2_framework_overhead.py [--reps 5] [--widths 4,64]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import load_average, print_machine, table
from bench._loops import Go, clocked, digits, lightning_fit, plain_loop
from esper_es.config import RunConfig
from esper_es.nn.hosts import DigitsCNN
from esper_es.runtime.environment import configure_determinism, pin_threads
from esper_es.trainer.api import built_in_trainer


def no_seeds(width: int) -> RunConfig:
    """The default run on a host of `width`, with no seed layers."""
    c = RunConfig()
    return attrs.evolve(
        c,
        host=attrs.evolve(c.host, width=width),
        seeds=attrs.evolve(c.seeds, layers={}),
    )


def esper_run(config: RunConfig, directory: str) -> Go:
    """`Trainer.run` of `config`'s built-in task, ready to run (no controller)."""
    trainer = built_in_trainer(
        config, seed=0, db_path=Path(tempfile.mkdtemp(dir=directory)) / "r.db", controller=None
    )

    def go() -> None:
        trainer.run()

    return go


def variants(width: int, directory: str) -> dict[str, Callable[[], Go]]:
    """Each variant's `prepare` for a host of `width` (builds its model, optimizer, data)."""
    config = no_seeds(width)
    data = digits(0)

    def host() -> DigitsCNN:
        return DigitsCNN(width=width, seed=1)

    return {
        "plain loop": lambda: plain_loop(host(), data, config, 0),
        "Lightning, checkpoint each epoch, no logger": lambda: lightning_fit(
            host(), data, config, 0
        ),
        "esper-es, no seed layers": lambda: esper_run(config, directory),
    }


def measure(width: int, reps: int, directory: str) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds per variant and repetition, interleaved (a warm-up round first)."""
    runs = variants(width, directory)
    for prepare in runs.values():
        clocked(prepare())
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    names = list(runs)
    for rep in range(reps):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            seconds[name].append(clocked(runs[name]()))
    return seconds


def main() -> int:
    """Measure and print the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--widths", default="4,64")
    args = ap.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    pin_threads(1, None)
    configure_determinism()
    widths = [int(w) for w in args.widths.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for w in widths:
            results[w] = measure(w, args.reps, d)
    print("## B2: framework overhead with nothing growing\n")
    print_machine()
    print(f"\n{args.reps} interleaved repetitions per host after a warm-up. Ratio = median over "
          "repetitions of (variant ÷ plain loop of the same repetition), by wall time and by "
          "the process's CPU time; in brackets the spread (min-max) of the per-repetition "
          f"wall ratios. Load average at the end: {load_average()}.\n")  # fmt: skip
    header = ["variant"]
    for w in widths:
        header += [f"width {w}: wall s", f"width {w}: ÷ plain (wall)", f"width {w}: ÷ plain (CPU)"]
    rows = []
    for name in results[widths[0]]:
        row = [name]
        for w in widths:
            runs, base = results[w][name], results[w]["plain loop"]
            walls = [a[0] / b[0] for a, b in zip(runs, base, strict=True)]
            cpus = [a[1] / b[1] for a, b in zip(runs, base, strict=True)]
            row += [
                f"{statistics.median(r[0] for r in runs):.3f}",
                f"{statistics.median(walls):.3f} ({min(walls):.2f}-{max(walls):.2f})",
                f"{statistics.median(cpus):.3f}",
            ]
        rows.append(row)
    table(header, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
