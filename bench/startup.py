"""Start-up: `esper-es train --epochs 1` wall time ÷ (`python -c "import torch"` + its training).

Each repetition runs, in fresh processes and in alternating order, `python -c "import torch"`
and `esper-es train --epochs 1 --json` (the built-in default run, one epoch); the run's own
`seconds` (what `Trainer.run` took) is its training time. Ratio per repetition: train wall ÷
(import torch wall + training seconds); the median is reported. Target (issue 12): ≤ 1.5.
With `--importtime`, also lists which modules the train command imports that `import torch`
does not, by cumulative import time (one `python -X importtime` run).

    .venv/bin/python bench/startup.py [--reps 5] [--importtime]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import load_average, print_machine, table

PY = sys.executable
TRAIN = [PY, "-m", "esper_es.cli.main", "train", "--epochs", "1", "--json", "--db"]


def wall(cmd: list[str], **kw: object) -> tuple[float, str]:
    """(seconds, stdout) of `cmd` in a fresh process."""
    t = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout  # type: ignore[call-overload]
    return time.perf_counter() - t, str(out)


def importtime(directory: str) -> list[tuple[str, float]]:
    """Top-level modules `train` imports beyond torch's own, by cumulative seconds."""
    done = subprocess.run(
        [PY, "-X", "importtime", *TRAIN[1:], os.path.join(directory, "i.db")],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if not cumulative.strip().isdigit() or name.startswith("  ") or not name.strip():
            continue
        rows.append((name.strip(), int(cumulative) / 1e6))
    return sorted(rows, key=lambda r: -r[1])[:8]


def main() -> int:
    """Measure and print the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--importtime", action="store_true")
    args = ap.parse_args()
    torch_s, train_s, trained_s, ratios = [], [], [], []
    with tempfile.TemporaryDirectory() as d:
        wall([PY, "-c", "import torch"])  # warm the page cache
        for rep in range(args.reps):
            db = os.path.join(d, f"r{rep}.db")
            order = ("torch", "train") if rep % 2 == 0 else ("train", "torch")
            for which in order:
                if which == "torch":
                    torch_s.append(wall([PY, "-c", "import torch"])[0])
                else:
                    seconds, out = wall([*TRAIN, db])
                    train_s.append(seconds)
                    trained_s.append(float(json.loads(out)["seconds"]))
            ratios.append(train_s[-1] / (torch_s[-1] + trained_s[-1]))
        imports = importtime(d) if args.importtime else []
    print("## Start-up: `esper-es train --epochs 1`\n")
    print_machine()
    print(f"\n{args.reps} repetitions, fresh processes, alternating order; medians. "
          f"Load average at the end: {load_average()}.\n")  # fmt: skip
    table(
        ["measure", "value"],
        [
            ['`python -c "import torch"` wall', f"{statistics.median(torch_s):.2f} s"],
            ["`esper-es train --epochs 1` wall", f"{statistics.median(train_s):.2f} s"],
            ["its training (`Trainer.run`)", f"{statistics.median(trained_s):.2f} s"],
            [
                "**train wall ÷ (import torch + training)** (target ≤ 1.5)",
                f"**{statistics.median(ratios):.2f}** ({min(ratios):.2f}-{max(ratios):.2f})",
            ],
        ],
    )
    if imports:
        rows = [[n, f"{s:.2f}"] for n, s in imports]
        table(["top-level import of `train`", "cumulative s"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
