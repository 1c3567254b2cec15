"""B12: the text config: the narrow transformer + seeds vs the same host static vs a static
host of twice the width (d_model x 2), same epochs and schedule, several master seeds each.

Validation loss at the end (next character, cross-entropy). Target (issue 11): the seeded host
closes at least half of the gap between the narrow static host and the wide one
((static narrow - seeded) / (static narrow - static wide) >= 0.5), at <= 50 % of the wide
host's parameters. Also per strategy: decisions and how often they paid.

A fourth variant bounds what residual kernels can add: the narrow host with one more block
(`n_blocks` + 1), static, i.e. a block-sized residual branch present from the first step. It
is a control, not part of the target.

    .venv/bin/python bench/b12_text.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import print_machine, table
from bench._growth import (
    fossilized,
    mean,
    run_interleaved,
    static,
    strategy_rows,
    variant_row,
)
from esper_es.config import RunConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("seeded (narrow)", "static (narrow)", "static (2x wide)", "static (narrow, +1 block)")


def variant(base: RunConfig, name: str) -> tuple[RunConfig, bool]:
    """The config of a variant and whether it runs the controller."""
    if name == NAMES[0]:
        return base, True
    if name == NAMES[3]:
        return static(base, lambda h: attrs.evolve(h, n_blocks=h.n_blocks + 1)), False
    d = base.host.d_model * (1 if name == NAMES[1] else 2)
    return static(base, lambda h: attrs.evolve(h, d_model=d)), False


def main() -> int:
    """Train every variant for every seed (interleaved); print the tables."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    base = load_config(ROOT / "configs" / "text.toml")
    results = run_interleaved(base, args.seeds, NAMES, variant)
    t, h = base.train, base.host
    print("## B12: the text config\n")
    print_machine()
    print(f"\n{t.epochs} epochs, {t.lr_schedule} schedule (lr {t.lr}), d_model {h.d_model} vs "
          f"{2 * h.d_model}, master seeds {args.seeds}; validation loss at the end.\n")  # fmt: skip
    wide = max(r.parameters for r in results[NAMES[2]])
    rows = []
    for name in NAMES:
        rows.append(variant_row(name, results[name], lambda r: r.val_loss, 1, "", "", 4, wide))
    table(["variant", "mean val. loss", "std", "per seed", "parameters", "max ÷ wide"], rows)
    seeded, narrow, wide_loss, deeper = (mean([r.val_loss for r in results[n]]) for n in NAMES)

    def closes(loss: float) -> float:
        return (narrow - loss) / (narrow - wide_loss) if narrow != wide_loss else float("nan")

    closed = closes(seeded)
    most = max(r.parameters for r in results[NAMES[0]]) / wide

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print(f"\ntarget: closes >= half of the gap ({closed:.2f}: {met(closed >= 0.5)}), at <= 50 % "
          f"of the wide host's parameters ({100 * most:.1f} %: {met(most <= 0.5)})")  # fmt: skip
    print(f"control: one more block, static, closes {closes(deeper):.2f} of the gap")
    print(f"\nfossilized seeds per seeded run: {fossilized(results[NAMES[0]])}\n")
    table(["strategy", "decisions", "outcomes measured", "paid", "summed contribution"],
          strategy_rows(results[NAMES[0]]))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
