"""The kernel config travels from the command through the decider into `SeedGerminated` (v3)."""

from __future__ import annotations

from typing import Any

import pytest

from esper_es.core import commands as c
from esper_es.core import events as ev
from esper_es.core.decider import Context, decide, evolve
from esper_es.core.decisions import AdaptationDecision
from esper_es.core.lifecycle import Stage
from esper_es.core.state import LayerState, SeedState
from esper_es.core.strategies import plan
from esper_es.errors import IllegalTransition
from esper_es.store import schemas

LAYER = LayerState("layer1", "image", 4, 2, frozenset({"conv3x3", "mlp"}))


def germinate(**kw: Any) -> c.GerminateSeed:
    """A germination of layer1/0 at step 5."""
    return c.GerminateSeed(
        command_id="cmd-1", seed="layer1/0", step=5, blueprint="conv3x3", kernel_id="k-1",
        init_seed=3, **kw,
    )  # fmt: skip


def test_the_command_config_is_recorded_in_the_event_as_a_copy() -> None:
    config = {"expansion": 8.0}
    cmd = germinate(config=config)
    (event,) = decide(SeedState.dormant("layer1/0"), cmd, Context(layer=LAYER))
    assert isinstance(event, ev.SeedGerminated) and event.VERSION == 3
    assert event.config == {"expansion": 8.0} and event.config is not config
    payload = ev.to_payload(event)
    assert payload["config"] == {"expansion": 8.0}
    schemas.validate("SeedGerminated", 3, payload)
    assert evolve(SeedState.dormant("layer1/0"), event).stage is Stage.GERMINATED


def test_without_a_config_the_event_records_the_blueprint_defaults() -> None:
    assert germinate().config == {}
    (event,) = decide(SeedState.dormant("layer1/0"), germinate(), Context(layer=LAYER))
    assert isinstance(event, ev.SeedGerminated) and event.config == {}


@pytest.mark.parametrize("bad", [[("expansion", 2.0)], {1: 2.0}, "expansion=2"])
def test_a_config_that_is_not_a_table_is_refused(bad: Any) -> None:
    with pytest.raises(IllegalTransition, match="not a table"):
        decide(SeedState.dormant("layer1/0"), germinate(config=bad), Context(layer=LAYER))


def _plan(germination: Any) -> list[c.GerminateSeed]:
    ids = iter(f"c{i}" for i in range(10))
    decision = AdaptationDecision(
        layer_name="layer1", adaptation_type="add_seed", parameters={"num_seeds": 2},
        decision_id="dec",
    )  # fmt: skip
    p = plan(
        decision, layer=LAYER, seeds={}, stats={}, candidates=["conv3x3", "mlp"], step=7,
        new_id=lambda: next(ids), germination=germination,
    )  # fmt: skip
    cmds = [cmd for cmd in p.commands if isinstance(cmd, c.GerminateSeed)]
    assert len(cmds) == len(p.commands) == 2
    return cmds


def test_a_germination_returning_a_config_puts_it_in_the_command() -> None:
    configs = {"conv3x3": {"expansion": 4.0}, "mlp": {"expansion": 8.0}}
    cmds = _plan(lambda seed, bp, cid: (f"k-{bp}-{cid}", 11, configs[bp]))
    assert [(x.blueprint, x.kernel_id, x.init_seed, x.config) for x in cmds] == [
        ("conv3x3", "k-conv3x3-c0", 11, {"expansion": 4.0}),
        ("mlp", "k-mlp-c1", 11, {"expansion": 8.0}),
    ]
    assert cmds[0].config is not configs["conv3x3"]


def test_a_germination_returning_two_values_means_the_defaults() -> None:
    cmds = _plan(lambda seed, bp, cid: (f"k-{bp}", 1))
    assert [x.config for x in cmds] == [{}, {}]


def test_reading_a_germination_copies_its_config_and_converts_like_cattrs() -> None:
    payload = {
        "seed": "l/0", "step": 1, "layer": "l", "blueprint": "mlp", "kernel_id": "k",
        "init_seed": 2, "blend_target": 1.0, "config": {"expansion": 2.0, "nested": {"a": [1]}},
    }  # fmt: skip
    event = ev.from_payload("SeedGerminated", payload)
    assert isinstance(event, ev.SeedGerminated)
    assert event.config == payload["config"] and event.config is not payload["config"]
    assert event == ev._converter.structure(dict(payload), ev.SeedGerminated)
    odd = {**payload, "config": {1: "x"}}  # not JSON; the general path converts the key
    assert ev.from_payload("SeedGerminated", odd) == ev._converter.structure(
        dict(odd), ev.SeedGerminated
    )
    assert not schemas.is_flat("SeedGerminated", 3)
