"""B13: per-boundary read time at 1 M events ÷ at 10 k events (SPEC §10, target <= 2).

A simulated run database of each size (`esper_es.simulate`: the real command path), then the
reads a trainer makes at every boundary (`read(from_seq=…, branch=…)`: its newest events),
`inspect --at 100` / `replay --to` (`read(to_seq=100)`), and `head_seq(branch)`, each timed
as the median of many repetitions on the same open database.

    .venv/bin/python bench/b13_reads.py [--sizes 10000,100000,1000000] [--reps 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import print_machine, table
from esper_es.simulate import simulate
from esper_es.store.database import RunDatabase


def median_ms(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of `fn` in milliseconds."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def measure(path: Path, reps: int) -> dict[str, float]:
    """The three reads' median times on the database at `path`."""
    with RunDatabase.open(path, readonly=True) as db:
        head = db.head_seq()
        return {
            "boundary read (newest 20 events)": median_ms(
                lambda: list(db.read(from_seq=head - 19, branch="main")), reps
            ),
            "read to seq 100 (inspect --at, replay --to)": median_ms(
                lambda: list(db.read(to_seq=100, branch="main")), reps
            ),
            "head_seq(main)": median_ms(lambda: db.head_seq("main"), reps),
        }


def main() -> None:
    """Build the databases, measure, print the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = Path(tmp) / f"run{n}.db"
            simulate(path, events=n, seed=1)
            results[n] = measure(path, args.reps)
    print(f"## B13: reads as the log grows ({args.reps} repetitions, median)\n")
    print_machine()
    small, large = sizes[0], sizes[-1]
    rows = []
    for what in results[small]:
        ratio = results[large][what] / results[small][what]
        rows.append(
            [what, *(f"{results[n][what]:.3f}" for n in sizes), f"{ratio:.2f}",
             "met" if ratio <= 2 else "missed"]
        )  # fmt: skip
    header = ["read", *(f"{n:,} events (ms)" for n in sizes), f"{large:,} ÷ {small:,}", "≤ 2"]
    table(header, rows)


if __name__ == "__main__":
    main()
