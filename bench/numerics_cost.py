"""What portable numerics cost: portable ÷ native training time, default run and text config.

Each run is `esper-es train --json` in a fresh process (the pins are read when torch starts),
native and portable interleaved so that drift in the machine's load hits both alike; the
ratio is of the training seconds the run reports (start-up excluded), median over repetitions.
Both modes train the same config and master seed; their fingerprints differ (other kernels).

    .venv/bin/python bench/numerics_cost.py [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ROOT, print_machine, table
from esper_es.numerics import PORTABLE_ENV

CONFIGS = {"default digits run (12 epochs)": None, "configs/text.toml": "configs/text.toml"}


def train_seconds(config: str | None, mode: str, db: Path) -> float:
    """Training seconds of one `esper-es train` in a fresh process in `mode`."""
    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV}
    args = [sys.executable, "-m", "esper_es.cli.main", "train", "--db", str(db), "--json"]
    args += ["--numerics", mode] + (["--config", str(ROOT / config)] if config else [])
    out = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def main() -> None:
    """Measure and print the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, config in CONFIGS.items():
            times: dict[str, list[float]] = {"native": [], "portable": []}
            for i in range(args.reps):
                for mode in ("native", "portable"):
                    db = Path(tmp) / f"{mode}-{i}-{len(rows)}.db"
                    times[mode].append(train_seconds(config, mode, db))
            ratios = [p / n for p, n in zip(times["portable"], times["native"], strict=True)]
            rows.append([
                label, f"{statistics.median(times['native']):.2f}",
                f"{statistics.median(times['portable']):.2f}", f"{statistics.median(ratios):.2f}",
            ])  # fmt: skip
    print(f"## Portable numerics: cost against native ({args.reps} interleaved runs each)\n")
    print_machine()
    table(["run", "native training (s)", "portable training (s)", "portable ÷ native"], rows)


if __name__ == "__main__":
    main()
