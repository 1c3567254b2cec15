"""Step time with background compilation on ÷ off, on real runs (SPEC §6: it never stalls).

Runs a config (default: the built-in default run, `configs/digits.toml`, what `esper-es train`
runs) with `[library] compile = false` and `true`, alternating, `--reps` times each, in fresh
trainers of this process. A step's time is the wall time between two consecutive `on_step`
calls: the optimizer step plus its boundary (events, checkpoints, compile requests). Per run:
p50 and p99 over its steps; reported: the median over the repetitions of each, the on ÷ off
ratios, the switches recorded (`KernelCompiled`), the kernel calls that ran compiled, and
whether every run ended on the same fingerprint (it must: a switch is bit-identical).
`cpu_p50_ms` is the training thread's own CPU time per step (`time.thread_time`): the work it
does, apart from waiting for a core that another process holds.

    .venv/bin/python bench/compile_steps.py [--config F] [--epochs N] [--reps N] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, load_average, machine

from esper_es.config import config_from_dict
from esper_es.library.compiler import BackgroundCompiler
from esper_es.store.database import RunDatabase
from esper_es.trainer import built_in_trainer


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def one_run(text: str, compile_: bool, epochs: int | None, db: Path) -> dict[str, Any]:
    """Train once; per-step times and what compilation did."""
    config = config_from_dict(
        tomllib.loads(text + f"\n[library]\ncompile = {'true' if compile_ else 'false'}\n")
    )
    stamps: list[tuple[float, float]] = []
    trainer = built_in_trainer(
        config,
        seed=0,
        db_path=db,
        on_step=lambda t, s: stamps.append((time.perf_counter(), time.thread_time())),
    )
    result = trainer.run(epochs)
    ms = [(b[0] - a[0]) * 1e3 for a, b in itertools.pairwise(stamps)]
    cpu = [(b[1] - a[1]) * 1e3 for a, b in itertools.pairwise(stamps)]
    with RunDatabase.open(db, readonly=True) as rdb:
        switches = sum(1 for _ in rdb.read(types=["KernelCompiled"]))
    return {
        "compile": compile_,
        "p50_ms": _percentile(ms, 0.5),
        "p99_ms": _percentile(ms, 0.99),
        "max_ms": max(ms),
        "cpu_p50_ms": _percentile(cpu, 0.5),
        "seconds": result.seconds,
        "steps": result.steps,
        "switches": switches,
        "calls": trainer.compilation.calls(),
        "rejected": len(trainer.compilation.rejected),
        "fingerprint": result.fingerprint,
    }


def main() -> None:
    """Measure and print a markdown summary (or JSON)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default=str(ROOT / "configs" / "digits.toml"))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--nice", type=int, default=BackgroundCompiler.nice, help="worker niceness")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    BackgroundCompiler.nice = args.nice
    text = Path(args.config).read_text("utf-8")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for on in (False, True):
                runs.append(one_run(text, on, args.epochs, Path(tmp) / f"{rep}-{on}.db"))
    summary: dict[str, Any] = {
        "config": args.config,
        "epochs": args.epochs,
        "nice": args.nice,
        "load_average": load_average(),
    }
    for on in (False, True):
        mine = [r for r in runs if r["compile"] is on]
        key = "on" if on else "off"
        for m in ("p50_ms", "p99_ms", "max_ms", "cpu_p50_ms", "seconds"):
            summary[f"{key}_{m}"] = round(statistics.median(r[m] for r in mine), 3)
        summary[f"{key}_switches"] = [r["switches"] for r in mine]
        summary[f"{key}_compiled_calls"] = [r["calls"]["compiled"] for r in mine]
    summary["p50_ratio"] = round(summary["on_p50_ms"] / summary["off_p50_ms"], 3)
    summary["p99_ratio"] = round(summary["on_p99_ms"] / summary["off_p99_ms"], 3)
    summary["cpu_p50_ratio"] = round(summary["on_cpu_p50_ms"] / summary["off_cpu_p50_ms"], 3)
    summary["one_fingerprint"] = len({r["fingerprint"] for r in runs}) == 1
    if args.json:
        print(json.dumps({"machine": machine(), "summary": summary, "runs": runs}))
        return
    print("# background compilation: step time on ÷ off")
    for k, v in machine():
        print(f"- {k}: {v}")
    for k, v in summary.items():
        print(f"- {k}: {v}")


if __name__ == "__main__":
    main()
