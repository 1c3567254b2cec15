"""B1 (second part): a run with 128 seed slots per layer ÷ the same run with 2 (target ≤ 1.05).

The default digits run with the controller off and the same two seeds germinated in both
(one per layer, by a user decision after step 5), so the only difference is the number of
dormant slots: 2 or 128 after each seed layer. Trained in this process, interleaved; the
ratio of the training times, median over repetitions. Dormant slots should cost nothing per
step: boundary work walks the seeds that have events and the kernels, not the slots.

    .venv/bin/python bench/b1_slot_scaling.py [--reps 5] [--epochs 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import attrs

from bench._common import print_machine, table
from esper_es.config import RunConfig
from esper_es.core.decisions import AdaptationDecision
from esper_es.trainer import Trainer
from esper_es.trainer.api import built_in_trainer


def seconds(slots: int, epochs: int, db: Path) -> float:
    """Training time of the default run with `slots` seed slots per layer."""
    config = RunConfig()
    config = attrs.evolve(
        config,
        train=attrs.evolve(config.train, epochs=epochs),
        seeds=attrs.evolve(config.seeds, layers={"layer1": slots, "layer2": slots}),
        controller=attrs.evolve(config.controller, enabled=False),
    )

    def germinate_two(trainer: Trainer, step: int) -> None:
        if step == 5:
            for layer in ("layer1", "layer2"):
                trainer.submit(AdaptationDecision(
                    layer_name=layer, adaptation_type="add_seed", parameters={"num_seeds": 1}
                ))  # fmt: skip

    trainer = built_in_trainer(config, seed=0, db_path=db, on_step=germinate_two)
    t0 = time.perf_counter()
    trainer.run()
    return time.perf_counter() - t0


def main() -> None:
    """Measure and print the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args()
    times: dict[int, list[float]] = {2: [], 128: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.reps):
            for slots in times:
                times[slots].append(seconds(slots, args.epochs, Path(tmp) / f"r{slots}-{i}.db"))
    ratio = statistics.median(b / a for a, b in zip(times[2], times[128], strict=True))
    print(f"## B1: 128 seed slots per layer ÷ 2 ({args.reps} interleaved runs)\n")
    print_machine()
    table(
        ["slots per layer", "training (s, median)"],
        [[n, f"{statistics.median(t):.3f}"] for n, t in times.items()],
    )
    print(f"\n128 ÷ 2 (median of paired ratios): {ratio:.3f} (target ≤ 1.05: "
          f"{'met' if ratio <= 1.05 else 'missed'})")  # fmt: skip


if __name__ == "__main__":
    main()
