"""Shared by B9 and B12: train variants of a config side by side, several master seeds each.

A variant is the seeded run (the config as it is, heuristic controller) or a static host (no
seed layers, no controller) of a given width, always with the same epochs, optimizer and
learning-rate schedule. Per run: final validation accuracy and loss, parameters at the end
(host + every kernel still held), final seed stages, and per strategy the decisions and their
recorded outcomes (`DecisionOutcomeMeasured`).
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from esper_es.config import RunConfig, SeedsConfig
from esper_es.report.strategy_outcomes import StrategyOutcomes, strategy_outcomes
from esper_es.store.database import RunDatabase
from esper_es.trainer.api import built_in_trainer


@attrs.frozen
class RunOut:
    """One trained run's end."""

    accuracy: float
    val_loss: float
    parameters: int
    seeds: dict[str, int]
    strategies: tuple[StrategyOutcomes, ...]


def static(config: RunConfig, host: Callable[[Any], Any]) -> RunConfig:
    """`config` with no seed layers and the host changed by `host(config.host)`."""
    return attrs.evolve(config, host=host(config.host), seeds=SeedsConfig(layers={}))


def train_variant(config: RunConfig, seed: int, seeded: bool) -> RunOut:
    """Train one variant for one master seed into a throw-away database."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "run.db"
        kwargs: dict[str, Any] = {} if seeded else {"controller": None}
        trainer = built_in_trainer(config, seed=seed, db_path=db, **kwargs)
        r = trainer.run()
        params = sum(p.numel() for p in trainer.model.parameters())
        with RunDatabase.open(db, readonly=True) as d:
            per_strategy = strategy_outcomes(d.read())
    return RunOut(float(r.accuracy_end or 0.0), r.val_loss_end, params, r.seeds, per_strategy)


def mean(xs: Sequence[float]) -> float:
    """The mean."""
    return statistics.mean(xs)


def spread(xs: Sequence[float]) -> float:
    """The sample standard deviation (0 for one value)."""
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def strategy_rows(runs: Sequence[RunOut]) -> list[list[str]]:
    """Per strategy over `runs`: decisions, outcomes measured, paid (fraction), summed."""
    rows = []
    for i, first in enumerate(runs[0].strategies):
        made = sum(r.strategies[i].decisions for r in runs)
        measured = sum(r.strategies[i].measured for r in runs)
        paid = sum(r.strategies[i].paid for r in runs)
        total = sum(r.strategies[i].contribution_sum for r in runs)
        frac = f"{100 * paid / measured:.0f} %" if measured else "—"
        rows.append([first.strategy, str(made), str(measured), f"{paid} ({frac})", f"{total:+.4g}"])
    return rows


def run_interleaved(
    base: RunConfig,
    seeds: Sequence[int],
    names: Sequence[str],
    variant: Callable[[RunConfig, str], tuple[RunConfig, bool]],
) -> dict[str, list[RunOut]]:
    """Every variant for every master seed, the variants interleaved within each seed."""
    results: dict[str, list[RunOut]] = {n: [] for n in names}
    for seed in seeds:
        for name in names:
            config, seeded = variant(base, name)
            results[name].append(train_variant(config, seed, seeded))
    return results


def variant_row(
    name: str,
    runs: Sequence[RunOut],
    value: Callable[[RunOut], float],
    scale: float,
    unit: str,
    spread_unit: str,
    digits: int,
    wide: int,
) -> list[str]:
    """A variant's row: mean, spread and per-seed values of `value`, parameters, ÷ wide."""
    xs = [scale * value(r) for r in runs]
    counts = [r.parameters for r in runs]
    return [
        name,
        f"{mean(xs):.{digits}f}{unit}",
        f"{spread(xs):.{digits}f}{spread_unit}",
        " / ".join(f"{x:.{digits}f}" for x in xs),
        f"{min(counts)}-{max(counts)}" if min(counts) != max(counts) else str(counts[0]),
        f"{100 * max(counts) / wide:.1f} %",
    ]  # fmt: skip


def fossilized(runs: Sequence[RunOut]) -> str:
    """Fossilized seeds per run, e.g. `2 / 1 / 3`."""
    return " / ".join(str(r.seeds.get("FOSSILIZED", 0)) for r in runs)
