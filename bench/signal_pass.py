"""Where a TRAINING seed's signal is measured: `driver.signal_pass` shared vs separate, paired.

The default digits run (seeds, heuristic controller) on a host of `--width`, once per master
seed in each mode, back to back: the mean paired difference (shared - separate) of the final
validation accuracy and loss with its standard error, and the median per-seed ratio of the
training seconds (shared ÷ separate). The modes change which decisions a run makes, so the
accuracy comparison needs many seeds: one seed's difference is mostly which kernels it kept.
Chose the default (docs/training.md): 144 seeds at width 4, 72 at width 64.

    .venv/bin/python bench/signal_pass.py [--seeds 0-47] [--width 4]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from pathlib import Path

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import load_average, print_machine, table
from esper_es.config import RunConfig
from esper_es.runtime.environment import configure_determinism, pin_threads
from esper_es.trainer.api import built_in_trainer

MODES = ("shared", "separate")


def run(mode: str, width: int, seed: int, directory: str) -> tuple[float, float, float]:
    """(final accuracy, final validation loss, training seconds) of one default run."""
    c = RunConfig()
    c = attrs.evolve(
        c,
        host=attrs.evolve(c.host, width=width),
        driver=attrs.evolve(c.driver, signal_pass=mode),
    )
    path = Path(tempfile.mkdtemp(dir=directory)) / "r.db"
    r = built_in_trainer(c, seed=seed, db_path=path).run()
    assert r.accuracy_end is not None
    return r.accuracy_end, r.val_loss_end, r.seconds


def mean_se(values: list[float]) -> tuple[float, float]:
    """(mean, standard error of the mean)."""
    return statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))


def seed_range(text: str) -> range:
    """`0-47` -> range(0, 48)."""
    lo, _, hi = text.partition("-")
    return range(int(lo), int(hi or lo) + 1)


def main() -> None:
    """Run both modes over the seeds and print the paired comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=seed_range, default=seed_range("0-47"))
    ap.add_argument("--width", type=int, default=4)
    args = ap.parse_args()
    pin_threads(1, None)
    configure_determinism()
    print_machine()
    results: dict[str, list[tuple[float, float, float]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as directory:
        for seed in args.seeds:
            for mode in MODES if seed % 2 else MODES[::-1]:  # alternate which runs first
                results[mode].append(run(mode, args.width, seed, directory))
    shared, separate = results["shared"], results["separate"]
    acc = mean_se([(a[0] - b[0]) * 100 for a, b in zip(shared, separate, strict=True)])
    loss = mean_se([a[1] - b[1] for a, b in zip(shared, separate, strict=True)])
    ratio = statistics.median(a[2] / b[2] for a, b in zip(shared, separate, strict=True))
    print(
        f"\nWidth {args.width}, master seeds {args.seeds.start}-{args.seeds.stop - 1} "
        f"({len(args.seeds)}), load average at the end: {load_average()}.\n"
    )
    table(
        ["", "shared", "separate", "shared - separate (SE)"],
        [
            [
                "accuracy %",
                f"{statistics.mean(a[0] for a in shared) * 100:.2f}",
                f"{statistics.mean(b[0] for b in separate) * 100:.2f}",
                f"{acc[0]:+.3f} pp ({acc[1]:.3f})",
            ],
            [
                "validation loss",
                f"{statistics.mean(a[1] for a in shared):.4f}",
                f"{statistics.mean(b[1] for b in separate):.4f}",
                f"{loss[0]:+.4f} ({loss[1]:.4f})",
            ],
            ["seconds (median ratio)", "", "", f"{ratio:.3f}"],
        ],
    )


if __name__ == "__main__":
    main()
