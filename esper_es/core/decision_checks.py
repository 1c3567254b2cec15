"""Checking an adaptation decision in full before anything is queued or appended (SPEC §4).

A decision is checked twice, both times before it can reach a boundary: its own content when
it is built (`check_decision`: field types, a known adaptation type and strategy, only the
parameters its strategy reads, each of the right type and range), and against the layer it
names when it is submitted (`check_against_layer`: seed ids of that layer, blueprints that
fit it). Submission checks the content again because `parameters` is a plain dict the caller
may still change after building the decision.

What each strategy reads (see `strategies.py`); every strategy also reads `strategy`,
`blueprint` (one name) and `blueprints` (a list of names):

| strategy | parameters |
|---|---|
| diversify | `num_seeds` (integer >= 1) |
| replace | `num_replace` (integer >= 1), `seeds` (a list of this layer's seed ids) |
| specialize | `keep` (integer >= 1), `target` (number in [0, 1]), `seeds` (seed ids, as replace) |
| ensemble | `target` (number in [0, 1], or null for 1/n) |
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from esper_es.core.decisions import (
    STRATEGY_FOR_TYPE,
    AdaptationDecision,
    AdaptationType,
    InvalidDecision,
    Strategy,
)
from esper_es.core.state import LayerState
from esper_es.errors import UnknownBlueprint

_COMMON: Final = frozenset({"strategy", "blueprint", "blueprints"})

#: The parameters each strategy reads, beyond `_COMMON`.
PARAMETERS: Final[Mapping[Strategy, frozenset[str]]] = {
    Strategy.DIVERSIFY: frozenset({"num_seeds"}),
    Strategy.REPLACE: frozenset({"num_replace", "seeds"}),
    Strategy.SPECIALIZE: frozenset({"keep", "target", "seeds"}),
    Strategy.ENSEMBLE: frozenset({"target"}),
}

_COUNTS: Final = frozenset({"num_seeds", "num_replace", "keep"})


def known_parameters(strategy: Strategy) -> tuple[str, ...]:
    """The parameter names `strategy` reads, sorted."""
    return tuple(sorted(PARAMETERS[strategy] | _COMMON))


def check_decision(decision: AdaptationDecision) -> Strategy:
    """Check a decision's own content; return its strategy or raise InvalidDecision."""
    for name in ("layer_name", "adaptation_type", "reason"):
        value = getattr(decision, name)
        if not isinstance(value, str):
            raise InvalidDecision(f"{name} must be a string, got {_show(value)}")
    if not decision.layer_name:
        raise InvalidDecision("layer_name must name a seed layer, got ''")
    for name in ("telemetry_digest", "decision_id"):
        value = getattr(decision, name)
        if value is not None and not isinstance(value, str):
            raise InvalidDecision(f"{name} must be a string or None, got {_show(value)}")
    try:
        kind = AdaptationType(decision.adaptation_type)
    except ValueError:
        kinds = ", ".join(t.value for t in AdaptationType)
        raise InvalidDecision(
            f"unknown adaptation_type {decision.adaptation_type!r}; known: {kinds}"
        ) from None
    params = decision.parameters
    if not isinstance(params, Mapping):
        raise InvalidDecision(
            "parameters must be a mapping of parameter name to value "
            f"(e.g. {{'num_seeds': 2}}), got {_show(params)}"
        )
    for key in params:
        if not isinstance(key, str):
            raise InvalidDecision(f"parameter names must be strings, got {_show(key)}")
    strategy = _strategy(kind, params)
    known = known_parameters(strategy)
    for key in sorted(params):
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InvalidDecision(
                f"parameter {key!r} is not read by the {strategy.value} strategy "
                f"(adaptation_type {kind.value!r}){hint}; known: {', '.join(known)}"
            )
    for key in sorted(params):
        _check_value(strategy, key, params[key])
    if "blueprint" in params and "blueprints" in params:
        raise InvalidDecision("give either parameter 'blueprint' or 'blueprints', not both")
    return strategy


def check_against_layer(decision: AdaptationDecision, layer: LayerState) -> None:
    """Check the seeds and blueprints a (content-checked) decision names against its layer."""
    params = decision.parameters
    seeds = set(layer.seed_ids())
    for sid in params.get("seeds") or ():
        if sid not in seeds:
            raise InvalidDecision(
                f"parameter 'seeds': seed {sid!r} is not in layer {layer.name!r}; "
                f"its seeds: {', '.join(layer.seed_ids()) or '(none)'}"
            )
    named = params.get("blueprints", params.get("blueprint"))
    for name in [named] if isinstance(named, str) else (named or ()):
        if name not in layer.blueprints:
            raise UnknownBlueprint(name, layer.blueprints, layer.name)


def _strategy(kind: AdaptationType, params: Mapping[str, Any]) -> Strategy:
    named = params.get("strategy")
    if named is None:
        return STRATEGY_FOR_TYPE[kind]
    known = ", ".join(s.value for s in Strategy)
    if not isinstance(named, str):
        raise InvalidDecision(f"parameter 'strategy' must be one of {known}, got {_show(named)}")
    try:
        return Strategy(named.lower())
    except ValueError:
        raise InvalidDecision(f"unknown strategy {named!r}; known: {known}") from None


def _check_value(strategy: Strategy, key: str, value: Any) -> None:
    if key in _COUNTS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidDecision(f"parameter {key!r} must be an integer >= 1, got {_show(value)}")
    elif key == "target":
        if value is None and strategy is Strategy.ENSEMBLE:
            return  # null: equal targets of 1/n
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not 0.0 <= value <= 1.0
        ):
            raise InvalidDecision(
                f"parameter 'target' must be a number in [0, 1], got {_show(value)}"
            )
    elif key == "seeds":
        _names(key, value, "seed ids such as ['layer1/0']", unique=True)
    elif key == "blueprints":
        _names(key, value, "blueprint names such as ['mlp', 'lora']", unique=False)
    elif key == "blueprint" and not (isinstance(value, str) and value):
        raise InvalidDecision(
            f"parameter 'blueprint' must be one blueprint name such as 'mlp', got {_show(value)}"
        )


def _names(key: str, value: Any, what: str, *, unique: bool) -> None:
    if isinstance(value, str):
        raise InvalidDecision(
            f"parameter {key!r} must be a non-empty list of {what}, got the string "
            f"{value!r} (write [{value!r}])"
        )
    if not isinstance(value, Sequence) or not value:
        raise InvalidDecision(
            f"parameter {key!r} must be a non-empty list of {what}, got {_show(value)}"
        )
    for item in value:
        if not isinstance(item, str) or not item:
            raise InvalidDecision(f"parameter {key!r}: {_show(item)} is not a name ({what})")
    if unique and len(set(value)) != len(value):
        raise InvalidDecision(f"parameter {key!r} names a seed twice: {list(value)!r}")


def _show(value: Any) -> str:
    """`value` as a user reads it: its repr, shortened, with its type."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"
