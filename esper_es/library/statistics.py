"""Ranking blueprints by what their kernels did: a prior-smoothed mean contribution plus UCB.

For each arm `(blueprint, config, shape kind)` with outcomes `v_1 … v_n` (a kernel's last
measured counterfactual contribution; a kernel removed before any measurement counts
`unmeasured`, by default 0, and a fossilized kernel adds `fossil_bonus`):

    mean  = (prior_strength * prior_mean + sum(v_i)) / (prior_strength + n)
    bonus = exploration * sqrt(ln(1 + N) / (prior_strength + n))      N = outcomes of all arms
    score = mean + bonus

An arm never tried scores `prior_mean + exploration * sqrt(ln(1 + N) / prior_strength)`, so a
blueprint that did well beats an untried one only once its evidence outweighs the exploration
bonus, and one that did badly falls below it. Ties (e.g. an empty library) keep name order,
which is the ranking without a library.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from esper_es.core.canonical import canonical_json
from esper_es.core.state import LayerState
from esper_es.library.database import OutcomeRow


@attrs.frozen
class RankingPrior:
    """The ranking's knobs (the `[library]` section carries them)."""

    prior_mean: float = 0.0
    prior_strength: float = 1.0
    exploration: float = 0.01
    fossil_bonus: float = 0.0
    unmeasured: float = 0.0


@attrs.frozen
class ArmStats:
    """The outcomes of one `(blueprint, config, shape kind)` and its score."""

    blueprint: str
    config: str
    shape_kind: str
    n: int
    total: float
    fossilized: int
    mean: float
    score: float


def outcome_value(row: OutcomeRow, prior: RankingPrior) -> float:
    """What one outcome says about its arm (see the module docstring)."""
    value = row.contribution if row.contribution is not None else prior.unmeasured
    return value + (prior.fossil_bonus if row.outcome == "fossilized" else 0.0)


def arm_stats(
    rows: Iterable[OutcomeRow], prior: RankingPrior
) -> dict[tuple[str, str, str], ArmStats]:
    """Per-arm statistics and scores of `rows`."""
    grouped: dict[tuple[str, str, str], list[OutcomeRow]] = {}
    for r in rows:
        grouped.setdefault((r.blueprint, r.config, r.shape_kind), []).append(r)
    total_n = sum(len(v) for v in grouped.values())
    out = {}
    for key, rs in grouped.items():
        total = sum(outcome_value(r, prior) for r in rs)
        n = len(rs)
        mean = (prior.prior_strength * prior.prior_mean + total) / (prior.prior_strength + n)
        out[key] = ArmStats(
            *key, n, total, sum(r.outcome == "fossilized" for r in rs), mean,
            mean + _bonus(prior, total_n, n),
        )  # fmt: skip
    return out


def _bonus(prior: RankingPrior, total_n: int, n: int) -> float:
    if prior.prior_strength + n <= 0:
        return math.inf
    return prior.exploration * math.sqrt(math.log(1 + total_n) / (prior.prior_strength + n))


def rank_blueprints(
    blueprints: Sequence[str],
    shape_kind: str,
    rows: Iterable[OutcomeRow],
    prior: RankingPrior,
    configs: Mapping[str, Mapping[str, Any]],
) -> list[str]:
    """`blueprints` best first by score; `configs` are the resolved configs kernels get."""
    stats = arm_stats((r for r in rows if r.shape_kind == shape_kind), prior)
    total_n = sum(s.n for s in stats.values())
    untried = prior.prior_mean + _bonus(prior, total_n, 0)

    def score(name: str) -> float:
        arm = stats.get((name, canonical_json(dict(configs.get(name, {}))), shape_kind))
        return arm.score if arm is not None else untried

    return sorted(sorted(blueprints), key=score, reverse=True)


def library_ranking(
    outcomes: Callable[[str], Iterable[OutcomeRow]],
    prior: RankingPrior,
    configs: Callable[[LayerState, str], Mapping[str, Any]],
) -> Callable[[LayerState], Sequence[str]]:
    """An orchestrator `ranking`: the layer's blueprints ranked by the outcomes of its kind."""

    def ranking(layer: LayerState) -> Sequence[str]:
        names = list(layer.blueprints)
        cfgs = {name: configs(layer, name) for name in names}
        return rank_blueprints(names, layer.shape_kind, outcomes(layer.shape_kind), prior, cfgs)

    return ranking
