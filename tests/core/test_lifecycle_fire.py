"""`fire` runs a plain transition of the machine without `transitions`' event machinery: the
same outcome as running the machine itself, for every stage, trigger and gate result."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace
from typing import Any

import pytest

from esper_es.core import lifecycle
from esper_es.core.config import LifecycleConfig
from esper_es.core.lifecycle import MACHINE, Stage, fire
from esper_es.core.state import LayerState, SeedState
from esper_es.errors import IllegalTransition

TRIGGERS = [*MACHINE.events, "no_such_trigger"]

#: Commands whose every field passes its gate, fails it, or is not finite.
COMMANDS = [
    SimpleNamespace(step=step, alpha=x, target=x, blueprint=bp, improvement=x, contribution=x,
                    instability=1 - x if math.isfinite(x) else x)
    for step, x, bp in itertools.product(
        (0, 5, 500), (0.5, -1.0, 2.0, math.nan), ("conv", "nope")
    )
]  # fmt: skip
SEEDS = [
    SeedState("l/0", stage, alpha=alpha, blend_target=0.5, entered_step=0, embargo_until=until)
    for stage, alpha, until in itertools.product(Stage, (0.0, 0.5), (None, 100))
]
LAYERS = [None, LayerState("l", "image", 4, 2, frozenset({"conv"}))]
CONFIG = LifecycleConfig()


def _machine(
    seed: SeedState, trigger: str, command: Any, config: LifecycleConfig, layer: Any
) -> Stage:
    """`fire` through `transitions` itself."""
    cursor = lifecycle.GateInput(seed, command, config, layer)
    return lifecycle._fire_machine(seed, trigger, MACHINE.events.get(trigger), cursor)


def _outcome(run: Any, *args: Any) -> tuple[str, ...]:
    try:
        return ("moved", str(run(*args)))
    except IllegalTransition as exc:
        return ("refused", exc.seed, exc.state, exc.trigger, exc.reason)


@pytest.mark.parametrize("trigger", TRIGGERS)
def test_fire_matches_the_machine(trigger: str) -> None:
    outcomes = set()
    for seed, command, layer in itertools.product(SEEDS, COMMANDS, LAYERS):
        args = (seed, trigger, command, CONFIG, layer)
        got = _outcome(fire, *args)
        assert got == _outcome(_machine, *args), args
        outcomes.add(got[0])
    if trigger in MACHINE.events:
        assert outcomes == {"moved", "refused"}  # the grid reaches both sides of every trigger


def test_a_transition_that_does_more_is_fired_by_the_machine() -> None:
    """A callback (here on entering the destination) makes `fire` run the machine itself."""
    seed = SeedState("l/0", Stage.GERMINATED)
    entered = []
    state = MACHINE.get_state(Stage.TRAINING)
    state.add_callback("enter", lambda event: entered.append(event.model.seed.seed))
    try:
        assert fire(seed, "start_training", COMMANDS[0], CONFIG) is Stage.TRAINING
    finally:
        state.on_enter.clear()
    assert entered == ["l/0"]
    assert fire(seed, "start_training", COMMANDS[0], CONFIG) is Stage.TRAINING
    assert entered == ["l/0"]  # plain again: no callback left to run
