"""Per strategy: how many decisions were made and how often their recorded outcome paid.

Read from `AdaptationDecided` and `DecisionOutcomeMeasured` (`esper_es.core.outcomes`) over
every branch's own events, so a decision shared by branches counts once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from esper_es.core.decisions import Strategy


@attrs.frozen
class StrategyOutcomes:
    """One strategy's decisions: made, with an outcome measured, and of those, paid."""

    strategy: str
    decisions: int = 0
    measured: int = 0
    paid: int = 0
    contribution_sum: float = 0.0

    @property
    def paid_fraction(self) -> float | None:
        """Paid ÷ measured (None when no outcome was measured)."""
        return self.paid / self.measured if self.measured else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (for `report --json`)."""
        return {
            "strategy": self.strategy,
            "decisions": self.decisions,
            "measured": self.measured,
            "paid": self.paid,
            "paid_fraction": self.paid_fraction,
            "contribution_sum": self.contribution_sum,
        }


def strategy_outcomes(events: Iterable[Any]) -> tuple[StrategyOutcomes, ...]:
    """Per strategy (in SPEC order), from recorded events with `.type` and `.payload`."""
    made: dict[str, int] = {}
    outcomes: dict[str, list[float]] = {}
    for e in events:
        p = e.payload
        if e.type == "AdaptationDecided":
            made[p["strategy"]] = made.get(p["strategy"], 0) + 1
        elif e.type == "DecisionOutcomeMeasured":
            outcomes.setdefault(p["strategy"], []).append(float(p["contribution"]))
    return tuple(_row(s.value, made, outcomes) for s in Strategy)


def _row(name: str, made: dict[str, int], outcomes: dict[str, list[float]]) -> StrategyOutcomes:
    values: Sequence[float] = outcomes.get(name, [])
    return StrategyOutcomes(
        strategy=name,
        decisions=made.get(name, 0),
        measured=len(values),
        paid=sum(1 for v in values if v > 0.0),
        contribution_sum=float(sum(values)),
    )
