"""Adaptation decisions and the four orchestration strategies (SPEC §4), as pure values.

A controller turns telemetry into an `AdaptationDecision`; the orchestrator picks a
`Strategy` for it and plans commands. Planning itself lives in `strategies.py`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any, Final

import attrs

from esper_es.core.canonical import canonical_json
from esper_es.errors import EXIT_USAGE, EsperError


class InvalidDecision(EsperError, ValueError):
    """An adaptation decision cannot be carried out as given: an unknown type, strategy,
    layer or seed, a parameter its strategy does not read, or a value of the wrong type or
    out of range. Raised before anything is queued or appended."""

    exit_code = EXIT_USAGE


class UnknownLayer(InvalidDecision):
    """A decision names a seed layer that is not registered; lists the known ones."""

    def __init__(self, layer: str, known: Iterable[str]) -> None:
        self.layer = layer
        self.known = tuple(sorted(known))
        super().__init__(
            f"unknown seed layer {layer!r}; known layers: {', '.join(self.known) or '(none)'}"
        )


class AdaptationType(StrEnum):
    """What a decision asks for."""

    ADD_SEED = "add_seed"
    ADD_NEURONS = "add_neurons"
    OPTIMIZE_PARAMETERS = "optimize_parameters"
    REMOVE_SEED = "remove_seed"
    MODIFY_ARCHITECTURE = "modify_architecture"


class Strategy(StrEnum):
    """How the orchestrator carries a decision out."""

    DIVERSIFY = "diversify"
    REPLACE = "replace"
    SPECIALIZE = "specialize"
    ENSEMBLE = "ensemble"


#: The default strategy of each adaptation type (SPEC §4); `parameters.strategy` overrides.
STRATEGY_FOR_TYPE: Final[Mapping[AdaptationType, Strategy]] = {
    AdaptationType.ADD_SEED: Strategy.DIVERSIFY,
    AdaptationType.ADD_NEURONS: Strategy.DIVERSIFY,
    AdaptationType.OPTIMIZE_PARAMETERS: Strategy.REPLACE,
    AdaptationType.REMOVE_SEED: Strategy.SPECIALIZE,
    AdaptationType.MODIFY_ARCHITECTURE: Strategy.ENSEMBLE,
}


def telemetry_digest(telemetry: Mapping[str, Any]) -> str:
    """`sha256:` digest of a telemetry snapshot's canonical JSON."""
    return "sha256:" + hashlib.sha256(canonical_json(dict(telemetry)).encode()).hexdigest()


@attrs.frozen(kw_only=True)
class AdaptationDecision:
    """`{layer, adaptation_type, parameters, reason, telemetry digest}` (SPEC §1).

    Keeps the call shape users of the seed system know: `AdaptationDecision(layer_name=...,
    adaptation_type="add_neurons", parameters={"num_seeds": 2})`.
    """

    layer_name: str
    adaptation_type: str
    parameters: dict[str, Any] = attrs.field(factory=dict)
    reason: str = ""
    telemetry_digest: str | None = None
    decision_id: str | None = None

    def __attrs_post_init__(self) -> None:
        self.strategy()  # a malformed decision fails where it is built (InvalidDecision)

    def strategy(self) -> Strategy:
        """The strategy this decision runs with, after checking the decision in full.

        `parameters.strategy`, else the type's default; InvalidDecision (naming the field or
        parameter and what is allowed) if anything is malformed (`core/decision_checks.py`).
        """
        from esper_es.core.decision_checks import check_decision

        return check_decision(self)


@attrs.frozen(kw_only=True)
class SeedStats:
    """What the orchestrator knows of how a seed performs (from telemetry)."""

    seed: str
    contribution: float | None = None
    improvement: float | None = None

    def score(self) -> float:
        """Higher is better: measured contribution first, else the training signal's gain."""
        if self.contribution is not None:
            return self.contribution
        if self.improvement is not None:
            return self.improvement * 1e-3
        return 0.0
