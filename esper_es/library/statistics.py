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

A run with a shared library ranks from two sources: `base`, the per-arm totals the library held
for it when it started (recorded in its log as `LibraryConsulted`, see `ArmTotals`), and its
own outcomes since. An arm's total is the base's value plus the run's own values, in order.
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


Arm = tuple[str, str, str]
"""`(blueprint, config as canonical JSON, shape kind)`."""


@attrs.frozen
class ArmTotals:
    """Some outcomes of one arm, summed before any prior (one `LibraryConsulted` entry)."""

    n: int = 0
    measured: int = 0
    """Outcomes with a measured contribution (the rest count `unmeasured`)."""
    contribution_sum: float = 0.0
    fossilized: int = 0

    def value(self, prior: RankingPrior) -> float:
        """The sum of these outcomes' values under `prior` (see `outcome_value`)."""
        unmeasured = (self.n - self.measured) * prior.unmeasured
        return self.contribution_sum + unmeasured + self.fossilized * prior.fossil_bonus


def arm_totals(rows: Iterable[OutcomeRow]) -> dict[Arm, ArmTotals]:
    """`rows` summed per arm, keys sorted."""
    out: dict[Arm, ArmTotals] = {}
    for r in rows:
        key = (r.blueprint, r.config, r.shape_kind)
        t = out.get(key, ArmTotals())
        out[key] = ArmTotals(
            n=t.n + 1,
            measured=t.measured + (r.contribution is not None),
            contribution_sum=t.contribution_sum + (r.contribution or 0.0),
            fossilized=t.fossilized + (r.outcome == "fossilized"),
        )
    return dict(sorted(out.items()))


def totals_to_payload(totals: Mapping[Arm, ArmTotals]) -> list[dict[str, Any]]:
    """The `arms` of a `LibraryConsulted`."""
    return [
        {"blueprint": b, "config": cfg, "shape_kind": kind, **attrs.asdict(t)}
        for (b, cfg, kind), t in sorted(totals.items())
    ]


def totals_from_payload(arms: Iterable[Mapping[str, Any]]) -> dict[Arm, ArmTotals]:
    """The per-arm totals a `LibraryConsulted` recorded."""
    return {
        (a["blueprint"], a["config"], a["shape_kind"]): ArmTotals(
            int(a["n"]), int(a["measured"]), float(a["contribution_sum"]), int(a["fossilized"])
        )
        for a in arms
    }


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
    rows: Iterable[OutcomeRow],
    prior: RankingPrior,
    base: Mapping[Arm, ArmTotals] | None = None,
) -> dict[Arm, ArmStats]:
    """Per-arm statistics and scores of `base` (recorded totals) plus `rows`."""
    grouped: dict[Arm, list[OutcomeRow]] = {key: [] for key in base or {}}
    for r in rows:
        grouped.setdefault((r.blueprint, r.config, r.shape_kind), []).append(r)
    before = base or {}
    total_n = sum(len(v) + before.get(k, ArmTotals()).n for k, v in grouped.items())
    out = {}
    for key, rs in grouped.items():
        own = sum(outcome_value(r, prior) for r in rs)
        b = before.get(key)
        total = own if b is None else b.value(prior) + own
        n = len(rs) + (b.n if b is not None else 0)
        fossilized = sum(r.outcome == "fossilized" for r in rs) + (b.fossilized if b else 0)
        mean = (prior.prior_strength * prior.prior_mean + total) / (prior.prior_strength + n)
        out[key] = ArmStats(*key, n, total, fossilized, mean, mean + _bonus(prior, total_n, n))
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
    base: Mapping[Arm, ArmTotals] | None = None,
) -> list[str]:
    """`blueprints` best first by score; `configs` are the resolved configs kernels get."""
    kind_base = {k: t for k, t in (base or {}).items() if k[2] == shape_kind}
    stats = arm_stats((r for r in rows if r.shape_kind == shape_kind), prior, kind_base)
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
    base: Callable[[], Mapping[Arm, ArmTotals]] | None = None,
) -> Callable[[LayerState], Sequence[str]]:
    """An orchestrator `ranking`: the layer's blueprints ranked by the outcomes of its kind."""

    def ranking(layer: LayerState) -> Sequence[str]:
        names = list(layer.blueprints)
        cfgs = {name: configs(layer, name) for name in names}
        rows = outcomes(layer.shape_kind)
        recorded = base() if base is not None else None
        return rank_blueprints(names, layer.shape_kind, rows, prior, cfgs, recorded)

    return ranking
