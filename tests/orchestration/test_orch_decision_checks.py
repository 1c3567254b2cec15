"""Decisions are checked in full when built and when submitted (issue 10, item 8).

Each malformed decision the issue reports (and its neighbours) is an `InvalidDecision` (exit 2)
naming the parameter and what is allowed, raised before anything is queued or appended:
through `AdaptationDecision(...)`, `submit`, the SPEC §4 call shape and its sync twin, with
a trainer attached and without.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from orch_support import Run

from esper_es.command_bus import CommandBus
from esper_es.core.decision_checks import check_decision, known_parameters
from esper_es.core.decisions import AdaptationDecision, InvalidDecision, Strategy
from esper_es.errors import EXIT_USAGE, EsperError, UnknownBlueprint
from esper_es.orchestrator import SeedOrchestrator

MakeRun = Callable[..., Run]
L = "layer1"

#: (parameters, what the message must say): each is refused where the decision is built.
MALFORMED: list[tuple[Any, str]] = [
    (None, r"parameters must be a mapping .* got None \(NoneType\)"),
    ([("num_seeds", 2)], r"parameters must be a mapping .*\(list\)"),
    ({"num_sedes": 2}, r"'num_sedes' is not read by the diversify .*did you mean 'num_seeds'"),
    ({"num_seeds": "2"}, r"'num_seeds' must be an integer >= 1, got '2' \(str\)"),
    ({"num_seeds": True}, r"'num_seeds' must be an integer >= 1"),
    ({"num_seeds": 0}, r"'num_seeds' must be an integer >= 1, got 0"),
    ({"blueprints": 7}, r"'blueprints' must be a non-empty list of blueprint names.*7 \(int\)"),
    ({"blueprints": []}, r"'blueprints' must be a non-empty list"),
    ({"blueprints": ["mlp", 3]}, r"'blueprints': 3 \(int\) is not a name"),
    ({"blueprint": ["mlp"]}, r"'blueprint' must be one blueprint name"),
    ({"blueprint": "mlp", "blueprints": ["lora"]}, r"either parameter 'blueprint' or"),
    ({"strategy": 3}, r"'strategy' must be one of diversify, replace"),
    ({"strategy": "grow"}, r"unknown strategy 'grow'"),
    ({"strategy": "replace", "seeds": 5}, r"'seeds' must be a non-empty list of seed ids.*5"),
    ({"strategy": "replace", "seeds": "layer1/0"}, r"got the string 'layer1/0' \(write"),
    ({"strategy": "replace", "seeds": ["layer1/0"] * 2}, r"'seeds' names a seed twice"),
    ({"strategy": "specialize", "target": 1.5}, r"'target' must be a number in \[0, 1\]"),
    ({"strategy": "specialize", "target": float("nan")}, r"'target' must be a number in"),
    ({"strategy": "specialize", "target": None}, r"'target' must be a number in"),
    ({"strategy": "ensemble", "keep": 1}, r"'keep' is not read by the ensemble strategy"),
    ({1: 2}, r"parameter names must be strings, got 1 \(int\)"),
]


def decision(params: Any, kind: str = "add_neurons", **kw: Any) -> AdaptationDecision:
    return AdaptationDecision(layer_name=L, adaptation_type=kind, parameters=params, **kw)


def mutated(params: Any) -> AdaptationDecision:
    """A decision built valid whose dict the caller changed afterwards (or swapped)."""
    d = decision({"num_seeds": 1})
    if isinstance(params, dict):
        d.parameters.clear()
        d.parameters.update(params)
        return d
    object.__setattr__(d, "parameters", params)  # what a caller could do; checked again
    return d


class FakeTrainer:
    """Attaches to the orchestrator and drives boundaries, as the trainer does."""

    def __init__(self, orch: SeedOrchestrator, bus: CommandBus) -> None:
        self.orch, self.bus = orch, bus
        orch.attach(self)

    def boundary(self, step: int) -> None:
        self.orch.settle(self.bus.execute_all(self.orch.commands_for_boundary(step, {})))


@pytest.mark.parametrize(("params", "message"), MALFORMED)
def test_a_malformed_decision_is_refused_where_it_is_built(params: Any, message: str) -> None:
    with pytest.raises(InvalidDecision, match=message) as info:
        decision(params)
    assert info.value.exit_code == EXIT_USAGE and isinstance(info.value, EsperError)


@pytest.mark.parametrize(("params", "message"), MALFORMED)
@pytest.mark.parametrize("attached", [False, True])
def test_submit_checks_again_before_anything_is_queued_or_appended(
    make_run: MakeRun, params: Any, message: str, attached: bool
) -> None:
    run = make_run({L: 4})
    orch = run.orchestrator()
    trainer = FakeTrainer(orch, run.bus) if attached else None
    head = run.db.head_seq()
    calls: list[Callable[[], object]] = [
        lambda: orch.submit(mutated(params)),
        lambda: orch.apply_architecture_modification_sync(None, mutated(params), timeout=1),
        lambda: asyncio.run(orch.apply_architecture_modification(None, mutated(params))),
    ]
    for call in calls:
        with pytest.raises(InvalidDecision, match=message):
            call()
        assert orch.pending() == 0 and run.db.head_seq() == head
    if trainer is not None:
        trainer.boundary(5)  # the boundary has nothing to do: nothing was queued
        assert run.db.head_seq() == head


@pytest.mark.parametrize("attached", [False, True])
def test_seeds_and_blueprints_are_checked_against_the_layer_at_submit(
    make_run: MakeRun, attached: bool
) -> None:
    run = make_run({L: 2, "layer2": 1})
    orch = run.orchestrator()
    if attached:
        FakeTrainer(orch, run.bus)
    head = run.db.head_seq()
    other_layers_seed = decision({"seeds": ["layer2/0"]}, "optimize_parameters")
    with pytest.raises(InvalidDecision, match=r"seed 'layer2/0' is not in layer 'layer1'; its "
                       r"seeds: layer1/0, layer1/1"):  # fmt: skip
        orch.submit(other_layers_seed)
    with pytest.raises(InvalidDecision, match=r"seed 'body/0' is not in layer 'layer1'"):
        orch.apply_architecture_modification_sync(
            None, decision({"seeds": ["body/0"]}, "optimize_parameters"), timeout=1
        )
    with pytest.raises(UnknownBlueprint, match=r"'lora' for layer 'layer1'; known: conv3x3"):
        orch.submit(decision({"blueprints": ["conv3x3", "lora"]}))
    with pytest.raises(UnknownBlueprint, match=r"'nope' for layer 'layer1'"):
        orch.submit(decision({"blueprint": "nope"}))
    assert orch.pending() == 0 and run.db.head_seq() == head


def test_a_submitted_decision_keeps_what_it_was_submitted_with(make_run: MakeRun) -> None:
    run = make_run({L: 4})
    orch = run.orchestrator()
    trainer = FakeTrainer(orch, run.bus)
    d = decision({"num_seeds": 1})
    ticket = orch.submit(d)
    d.parameters["num_seeds"] = 3  # too late: the ticket holds its own copy
    trainer.boundary(2)
    ok, details = ticket.result(0)
    assert ok and len(details["plan"]) == 1
    decided = next(r for r in run.db.read(stream="controller") if r.type == "AdaptationDecided")
    assert decided.payload["parameters"] == {"num_seeds": 1}


def test_every_parameter_each_strategy_reads_is_accepted() -> None:
    """What the controller and the strategies' own docs produce passes (replay re-submits it)."""
    good = [
        ("add_seed", {"num_seeds": 2, "blueprints": ["mlp"]}),
        ("add_neurons", {"blueprint": "mlp", "strategy": "DIVERSIFY"}),
        ("optimize_parameters", {"num_replace": 2, "seeds": ["layer1/0", "layer1/1"]}),
        ("optimize_parameters", {"num_replace": 1}),
        ("remove_seed", {"keep": 1, "target": 0.9}),
        ("remove_seed", {"keep": 2, "target": 1}),
        ("modify_architecture", {}),
        ("modify_architecture", {"target": None}),
        ("add_seed", {"strategy": "ensemble", "target": 0.5}),
    ]
    for kind, params in good:
        d = decision(params, kind)
        assert d.strategy() is check_decision(d)
    assert known_parameters(Strategy.REPLACE) == (
        "blueprint", "blueprints", "num_replace", "seeds", "strategy"
    )  # fmt: skip


def test_the_other_fields_are_typed_too() -> None:
    with pytest.raises(InvalidDecision, match=r"layer_name must be a string, got None"):
        AdaptationDecision(layer_name=None, adaptation_type="add_seed")  # type: ignore[arg-type]
    with pytest.raises(InvalidDecision, match=r"unknown adaptation_type 'prune'; known: add_seed"):
        AdaptationDecision(
            layer_name=L, adaptation_type="prune", parameters={"strategy": "replace"}
        )
    with pytest.raises(InvalidDecision, match=r"reason must be a string"):
        AdaptationDecision(layer_name=L, adaptation_type="add_seed", reason=3)  # type: ignore[arg-type]
    # The SPEC §4 call shape.
    d = AdaptationDecision(layer_name=L, adaptation_type="add_neurons", parameters={"num_seeds": 2})
    assert d.strategy() is Strategy.DIVERSIFY
