"""The heuristic controller: a pure function of telemetry, each rule reachable, caps respected."""

from __future__ import annotations

import json

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_es.controller import (
    Controller,
    ControllerConfig,
    HeuristicController,
    LayerTelemetry,
    SeedTelemetryView,
    Telemetry,
)
from esper_es.core.decisions import AdaptationType
from esper_es.core.lifecycle import Stage

KINDS = ("conv3x3", "depthwise", "norm")


def seed(i: int, stage: Stage = Stage.DORMANT, **kw: object) -> SeedTelemetryView:
    return SeedTelemetryView(seed=f"layer1/{i}", stage=stage.value, **kw)  # type: ignore[arg-type]


def telemetry(*seeds: SeedTelemetryView, **kw: object) -> Telemetry:
    layer = LayerTelemetry(name="layer1", num_seeds=len(seeds), seeds=seeds, blueprints=KINDS)
    args: dict[str, object] = {"step": 100, "epoch": 2, "steps_per_epoch": 50, "layers": (layer,)}
    args.update(kw)
    return Telemetry(**args)  # type: ignore[arg-type]


PLATEAU = {"val_loss_history": (1.0, 0.999, 0.998)}


def test_plateau_with_dormant_slots_adds_seeds() -> None:
    t = telemetry(seed(0, Stage.TRAINING, blueprint="norm"), seed(1), seed(2), **PLATEAU)
    (d,) = HeuristicController(ControllerConfig(seeds_per_adaptation=2)).decide(t)
    assert (d.layer_name, d.adaptation_type, d.parameters) == (
        "layer1",
        "add_seed",
        {"num_seeds": 2},
    )
    assert "plateaued: 1 -> 0.998" in d.reason and d.telemetry_digest == t.digest()


def test_no_plateau_while_loss_still_falls() -> None:
    t = telemetry(seed(0), val_loss_history=(1.0, 0.8, 0.6))
    assert HeuristicController().decide(t) == []


def test_plateau_with_ensemble_configured_ensembles() -> None:
    t = telemetry(seed(0), seed(1), **PLATEAU)
    (d,) = HeuristicController(ControllerConfig(ensemble=True)).decide(t)
    assert d.adaptation_type == "modify_architecture"


def test_underperforming_seed_is_replaced() -> None:
    t = telemetry(
        seed(0, Stage.EVALUATING, blueprint="norm", alpha=1.0, contribution=-0.02), seed(1)
    )
    (d,) = HeuristicController().decide(t)
    assert d.adaptation_type == "optimize_parameters"
    assert d.parameters == {"num_replace": 1, "seeds": ["layer1/0"]}
    assert "-0.02" in d.reason


def test_exploding_gradients_are_replaced() -> None:
    t = telemetry(seed(0, Stage.TRAINING, blueprint="norm", grad_norm_ratio=float("inf")))
    (d,) = HeuristicController().decide(t)
    assert d.adaptation_type == "optimize_parameters" and "unhealthy gradients" in d.reason
    assert json.dumps(t.to_dict(), allow_nan=False)  # inf is recorded as null


def test_uneven_contributions_specialize() -> None:
    t = telemetry(
        seed(0, Stage.EVALUATING, blueprint="norm", alpha=1.0, contribution=0.20),
        seed(1, Stage.FINE_TUNING, blueprint="conv3x3", alpha=1.0, contribution=0.01),
    )
    (d,) = HeuristicController().decide(t)
    assert d.adaptation_type == "remove_seed"
    assert d.parameters == {"seeds": ["layer1/1"], "keep": 1}
    assert "keep layer1/0" in d.reason and "layer1/1 +0.01 (FINE_TUNING)" in d.reason


def test_a_measured_seed_far_below_a_fossilized_one_is_specialized_away() -> None:
    t = telemetry(
        seed(0, Stage.FOSSILIZED, blueprint="conv3x3", alpha=1.0, contribution=0.30),
        seed(1, Stage.FINE_TUNING, blueprint="norm", alpha=1.0, contribution=0.004),
        seed(2, Stage.TRAINING, blueprint="depthwise"),
    )
    (d,) = HeuristicController().decide(t)
    assert d.adaptation_type == "remove_seed"
    # Only the measured weak seed goes: the young unmeasured one is left to its gates.
    assert d.parameters == {"seeds": ["layer1/1"], "keep": 1}
    assert "layer1/0 +0.3 (FOSSILIZED)" in d.reason and "cull layer1/1" in d.reason
    # Within the spread of the fossilized kernel: nothing to consolidate.
    close = telemetry(
        seed(0, Stage.FOSSILIZED, blueprint="conv3x3", alpha=1.0, contribution=0.30),
        seed(1, Stage.FINE_TUNING, blueprint="norm", alpha=1.0, contribution=0.295),
    )
    assert HeuristicController().decide(close) == []
    # A fossilized kernel alone is never specialized.
    alone = telemetry(
        seed(0, Stage.FOSSILIZED, blueprint="conv3x3", alpha=1.0, contribution=0.30), seed(1)
    )
    assert HeuristicController().decide(alone) == []


def test_uneven_contributions_with_none_paying_do_not_specialize() -> None:
    t = telemetry(
        seed(0, Stage.EVALUATING, blueprint="norm", alpha=1.0, contribution=-0.001),
        seed(1, Stage.FINE_TUNING, blueprint="conv3x3", alpha=1.0, contribution=-0.2),
    )
    ctl = HeuristicController(ControllerConfig(underperform_contribution=-1.0))
    assert ctl.decide(t) == []


def test_a_plateau_where_every_seed_pays_ensembles_the_free_slots() -> None:
    t = telemetry(
        seed(0, Stage.FOSSILIZED, blueprint="norm", alpha=1.0, contribution=0.030),
        seed(1, Stage.FINE_TUNING, blueprint="conv3x3", alpha=1.0, contribution=0.032),
        seed(2),
        **PLATEAU,
    )
    (d,) = HeuristicController().decide(t)
    assert d.adaptation_type == "modify_architecture" and d.parameters == {"target": 1.0}
    assert "every seed holding a kernel pays" in d.reason and "plateaued" in d.reason
    # One seed that does not pay (or is unmeasured) makes it DIVERSIFY instead.
    unmeasured = telemetry(
        seed(0, Stage.FOSSILIZED, blueprint="norm", alpha=1.0, contribution=0.030),
        seed(1, Stage.TRAINING, blueprint="conv3x3"),
        seed(2),
        **PLATEAU,
    )
    (d,) = HeuristicController().decide(unmeasured)
    assert d.adaptation_type == "add_seed"


def test_a_training_loss_plateau_within_the_epoch_grows() -> None:
    flat = (0.50,) * 10 + (0.495,) * 10
    falling = (0.50,) * 10 + (0.40,) * 10
    ctl = HeuristicController(ControllerConfig(plateau_steps=10, plateau_threshold=0.05))
    (d,) = ctl.decide(telemetry(seed(0), seed(1), recent_train_losses=flat))
    assert d.adaptation_type == "add_seed" and "training loss plateaued" in d.reason
    assert "0.5 -> 0.495" in d.reason
    assert ctl.decide(telemetry(seed(0), seed(1), recent_train_losses=falling)) == []
    assert ctl.decide(telemetry(seed(0), seed(1), recent_train_losses=flat[:19])) == []
    off = HeuristicController(ControllerConfig(plateau_steps=0, plateau_threshold=0.05))
    assert off.decide(telemetry(seed(0), seed(1), recent_train_losses=flat)) == []


def test_cooldown_cap_warmup_and_enabled_are_respected() -> None:
    t = telemetry(seed(0), seed(1), **PLATEAU)
    ctl = HeuristicController(ControllerConfig(cooldown_steps=30, max_adaptations_per_epoch=2))
    assert ctl.decide(t)
    assert ctl.decide(telemetry(seed(0), seed(1), last_decision_step=80, **PLATEAU)) == []
    assert ctl.decide(telemetry(seed(0), seed(1), last_decision_step=70, **PLATEAU))
    assert ctl.decide(telemetry(seed(0), seed(1), decisions_this_epoch=2, **PLATEAU)) == []
    assert HeuristicController(ControllerConfig(warmup_steps=101)).decide(t) == []
    assert HeuristicController(ControllerConfig(enabled=False)).decide(t) == []


def test_the_per_epoch_budget_caps_one_call() -> None:
    bad = dict(blueprint="norm", alpha=1.0, contribution=-0.5)
    layers = tuple(
        LayerTelemetry(
            name=f"l{i}",
            num_seeds=1,
            seeds=(SeedTelemetryView(seed=f"l{i}/0", stage="EVALUATING", **bad),),  # type: ignore[arg-type]
            blueprints=KINDS,
        )
        for i in range(4)
    )
    t = Telemetry(step=10, layers=layers, decisions_this_epoch=1)
    ctl = HeuristicController(ControllerConfig(max_adaptations_per_epoch=3, cooldown_steps=0))
    assert [d.layer_name for d in ctl.decide(t)] == ["l0", "l1"]


def test_the_controller_satisfies_the_protocol() -> None:
    assert isinstance(HeuristicController(), Controller)


# --- purity over random telemetry ------------------------------------------------------

_num = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32))
_seed_views = st.builds(
    SeedTelemetryView,
    seed=st.just("x"),
    stage=st.sampled_from([s.value for s in Stage]),
    alpha=st.floats(0.0, 1.0),
    blueprint=st.one_of(st.none(), st.sampled_from(KINDS)),
    improvement=_num,
    contribution=_num,
    grad_norm_ratio=_num,
)


@st.composite
def random_telemetry(draw: st.DrawFn) -> Telemetry:
    layers = []
    for i in range(draw(st.integers(0, 3))):
        views = draw(st.lists(_seed_views, min_size=1, max_size=4))
        views = [attrs.evolve(v, seed=f"L{i}/{j}") for j, v in enumerate(views)]
        kinds = tuple(draw(st.lists(st.sampled_from(KINDS), max_size=3, unique=True)))
        layers.append(
            LayerTelemetry(name=f"L{i}", num_seeds=len(views), seeds=tuple(views), blueprints=kinds)
        )
    step = draw(st.integers(0, 1000))
    losses = st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=6)
    return Telemetry(
        step=step,
        epoch=draw(st.integers(0, 20)),
        steps_per_epoch=draw(st.integers(0, 100)),
        train_loss_history=tuple(draw(losses)),
        val_loss_history=tuple(draw(losses)),
        val_accuracy_history=tuple(draw(losses)),
        last_decision_step=draw(st.one_of(st.none(), st.integers(0, step))),
        decisions_this_epoch=draw(st.integers(0, 4)),
        layers=tuple(layers),
        recent_train_losses=tuple(draw(losses)),
    )


_configs = st.builds(
    ControllerConfig,
    cooldown_steps=st.integers(0, 50),
    max_adaptations_per_epoch=st.integers(0, 4),
    plateau_window=st.integers(1, 4),
    plateau_threshold=st.floats(-0.1, 0.2),
    plateau_steps=st.integers(0, 3),
    ensemble=st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(t=random_telemetry(), cfg=_configs)
def test_decisions_are_a_pure_valid_function_of_telemetry(
    t: Telemetry, cfg: ControllerConfig
) -> None:
    ctl = HeuristicController(cfg)
    first, second = ctl.decide(t), HeuristicController(cfg).decide(t)
    assert first == second == ctl.decide(t)
    names = {layer.name for layer in t.layers}
    budget = max(0, cfg.max_adaptations_per_epoch - t.decisions_this_epoch)
    assert len(first) <= budget
    if t.last_decision_step is not None and t.step - t.last_decision_step < cfg.cooldown_steps:
        assert first == []
    for d in first:
        assert d.layer_name in names
        AdaptationType(d.adaptation_type)
        d.strategy()
        assert d.reason and d.telemetry_digest == t.digest()
    assert len({d.layer_name for d in first}) == len(first)  # one decision per layer and call
    json.dumps(t.to_dict(), allow_nan=False)
