"""Learned vs heuristic controller after a library warmed by 5 runs (issue 11, docs/controller.md).

Per task (digits: the B9 set-up, width-4 host, configs/digits.toml defaults; text:
configs/text.toml): 5 warm-up runs (master seeds 100-104, learned controller, each learning from
the ones before) fill a shared kernel library. Then each controller runs master seeds 0, 1, 2
(never used for warming), each on its own copy of the warmed library, so an evaluation run
neither sees nor changes another's outcomes. The heuristic reads the same library through its
blueprint ranking (docs/kernel-library.md); the learned controller reads it through its
posterior. Reported: final validation accuracy and loss, germinations, fossilized kernels and
the fraction of germinations fossilized (kernels alive at the end count as not fossilized).

    .venv/bin/python bench/learned_controller.py [--tasks digits text] [--seeds 0 1 2]
        [--warm 5] [--config-override controller.plateau_threshold=0.2]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import print_machine, table
from esper_es.config import RunConfig, config_from_dict, load_config
from esper_es.trainer.api import built_in_trainer

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"digits": None, "text": ROOT / "configs" / "text.toml"}


def with_controller(base: RunConfig, kind: str, library: Path) -> RunConfig:
    """`base` with `[controller] kind` and `[library] path` set."""
    return attrs.evolve(
        base,
        controller=attrs.evolve(base.controller, kind=kind),
        library=attrs.evolve(base.library, path=str(library)),
    )


def override(base: RunConfig, items: list[str]) -> RunConfig:
    """`base` with `section.key=value` overrides (numbers and booleans parsed)."""
    data = base.to_dict()
    for item in items:
        key, _, raw = item.partition("=")
        section, _, name = key.partition(".")
        value: Any = raw
        if raw in ("true", "false"):
            value = raw == "true"
        else:
            try:
                value = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    value = raw
        data[section][name] = value
    return config_from_dict(data)


def copy_library(src: Path, dst: Path) -> None:
    """A consistent copy of a (closed, WAL-mode) library file."""
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        a.backup(b)
    finally:
        a.close()
        b.close()


def counts(db: Path) -> tuple[int, int]:
    """(germinations, fossilizations) in a run's log."""
    conn = sqlite3.connect(db)
    try:
        n = dict(
            conn.execute(
                "SELECT type, COUNT(*) FROM events WHERE type IN "
                "('SeedGerminated', 'SeedFossilized') GROUP BY type"
            ).fetchall()
        )
    finally:
        conn.close()
    return int(n.get("SeedGerminated", 0)), int(n.get("SeedFossilized", 0))


def library_summary(path: Path) -> str:
    """Outcomes, contexts, fossilized and the contribution range a library holds."""
    conn = sqlite3.connect(path)
    try:
        n, fossil, lo, hi = conn.execute(
            "SELECT COUNT(*), SUM(outcome = 'fossilized'), MIN(contribution), MAX(contribution) "
            "FROM kernel_outcomes"
        ).fetchone()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        ctx = 0
        if "germination_contexts" in tables:  # created by the first recorded germination
            (ctx,) = conn.execute("SELECT COUNT(*) FROM germination_contexts").fetchone()
    finally:
        conn.close()
    span = "none measured" if lo is None else f"{lo:+.4f} .. {hi:+.4f}"
    return (
        f"{n} kernel outcomes ({fossil or 0} fossilized), {ctx} germination contexts, "
        f"contributions {span}"
    )


def run(config: RunConfig, seed: int, db: Path) -> dict[str, Any]:
    """Train one run; its final metrics and lifecycle counts."""
    r = built_in_trainer(config, seed=seed, db_path=db).run()
    germinated, fossilized = counts(db)
    return {
        "acc": float(r.accuracy_end or 0.0),
        "loss": float(r.val_loss_end),
        "germinated": germinated,
        "fossilized": fossilized,
    }


def main() -> int:
    """Warm a library per task, then run both controllers on copies of it; print the tables."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", nargs="+", default=["digits", "text"], choices=sorted(CONFIGS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--warm", type=int, default=5)
    ap.add_argument("--config-override", nargs="*", default=[])
    args = ap.parse_args()
    print("## Learned vs heuristic controller\n")
    print_machine()
    for task in args.tasks:
        base = override(load_config(CONFIGS[task]), args.config_override)
        results: dict[str, list[dict[str, Any]]] = {"heuristic": [], "learned": []}
        with tempfile.TemporaryDirectory() as tmp:
            warm = Path(tmp) / "warm.db"
            for k in range(args.warm):
                run(with_controller(base, "learned", warm), 100 + k, Path(tmp) / f"w{k}.db")
            warmed = library_summary(warm)
            for seed in args.seeds:
                for kind in results:
                    lib = Path(tmp) / f"lib-{kind}-{seed}.db"
                    copy_library(warm, lib)
                    db = Path(tmp) / f"{kind}-{seed}.db"
                    results[kind].append(run(with_controller(base, kind, lib), seed, db))
        print(f"\n### {task} ({base.train.epochs} epochs, master seeds {args.seeds}, library "
              f"warmed by {args.warm} learned runs; overrides: "
              f"{', '.join(args.config_override) or 'none'})\n")  # fmt: skip
        print(f"Warmed library: {warmed}\n")
        rows = []
        for kind, rs in results.items():
            accs = [r["acc"] for r in rs]
            losses = [r["loss"] for r in rs]
            g = sum(r["germinated"] for r in rs)
            f = sum(r["fossilized"] for r in rs)
            rows.append([
                kind,
                f"{100 * statistics.mean(accs):.2f} %",
                " / ".join(f"{100 * a:.2f}" for a in accs),
                f"{statistics.mean(losses):.4f}",
                " / ".join(f"{x:.4f}" for x in losses),
                f"{f}/{g}" + (f" = {f / g:.2f}" if g else ""),
            ])  # fmt: skip
        table(
            ["controller", "mean val. acc.", "per seed", "mean val. loss", "per seed",
             "fossilized / germinated"],
            rows,
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
