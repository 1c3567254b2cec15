"""The pure decider against SPEC §2: the transition table, the gates, L3/L4 on evolve, purity."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest

from esper_es.core import commands as c
from esper_es.core import events as ev
from esper_es.core.config import LifecycleConfig
from esper_es.core.decider import Context, decide, evolve, fold
from esper_es.core.lifecycle import TABLE, TRANSITIONS, Stage
from esper_es.core.state import LayerState, RunState, SeedState
from esper_es.errors import IllegalTransition, InconsistentHistory

# --- SPEC §2, written out independently of esper_es.core.lifecycle ------------------------

ALL_STAGES = (
    "DORMANT", "GERMINATED", "TRAINING", "GRAFTING", "STABILIZATION", "EVALUATING",
    "FINE_TUNING", "FOSSILIZED", "CULLED", "CANCELLED", "ROLLED_BACK", "EMBARGOED",
)  # fmt: skip

#: trigger -> (sources, destination), copied by hand from the SPEC §2 table.
SPEC_TABLE: dict[str, tuple[tuple[str, ...], str]] = {
    "germinate": (("DORMANT",), "GERMINATED"),
    "start_training": (("GERMINATED",), "TRAINING"),
    "cancel": (("GERMINATED", "TRAINING"), "CANCELLED"),
    "start_grafting": (("TRAINING",), "GRAFTING"),
    "stabilize": (("GRAFTING",), "STABILIZATION"),
    "evaluate": (("STABILIZATION",), "EVALUATING"),
    "fine_tune": (("EVALUATING",), "FINE_TUNING"),
    "fossilize": (("FINE_TUNING",), "FOSSILIZED"),
    "cull": (("TRAINING", "EVALUATING", "FINE_TUNING"), "CULLED"),
    "roll_back": (("GRAFTING", "STABILIZATION", "EVALUATING", "FINE_TUNING"), "ROLLED_BACK"),
    "embargo": (("CULLED", "CANCELLED", "ROLLED_BACK"), "EMBARGOED"),
    "release": (("EMBARGOED",), "DORMANT"),
}
#: The two internal triggers keep the stage. Alpha moves only where L3 lets it be non-zero
#: (FOSSILIZED freezes it); a target is set only on a seed that holds a kernel (L4) and is
#: not terminal (L2).
BLENDING = ("GRAFTING", "STABILIZATION", "EVALUATING", "FINE_TUNING", "FOSSILIZED")
WITH_KERNEL = ("GERMINATED", "TRAINING", *BLENDING)
INTERNAL_TABLE: dict[str, tuple[str, ...]] = {
    "adjust_blend": tuple(s for s in BLENDING if s != "FOSSILIZED"),
    "set_blend_target": tuple(s for s in WITH_KERNEL if s != "FOSSILIZED"),
}
ALL_TRIGGERS = (*SPEC_TABLE, *INTERNAL_TABLE)

EXPECTED_EVENT = {
    "germinate": "SeedGerminated",
    "start_training": "SeedTrainingStarted",
    "cancel": "SeedCancelled",
    "start_grafting": "SeedGraftingStarted",
    "stabilize": "SeedStabilized",
    "evaluate": "SeedEvaluationStarted",
    "fine_tune": "SeedFineTuningStarted",
    "fossilize": "SeedFossilized",
    "cull": "SeedCulled",
    "roll_back": "SeedRolledBack",
    "embargo": "SeedEmbargoed",
    "release": "SeedReleased",
    "adjust_blend": "BlendAdjusted",
    "set_blend_target": "BlendTargetSet",
}


def expected_dest(stage: str, trigger: str) -> str | None:
    """The destination SPEC §2 gives, the stage itself for internal triggers, None if refused."""
    if trigger in SPEC_TABLE:
        sources, dest = SPEC_TABLE[trigger]
        return dest if stage in sources else None
    return stage if stage in INTERNAL_TABLE[trigger] else None


# --- builders -------------------------------------------------------------------------

SEED = "layer1/0"
LAYER = LayerState("layer1", "image", 8, 4, frozenset({"conv3x3", "mlp"}), 1)
CONFIG = LifecycleConfig(
    min_training_steps=20,
    min_improvement=0.01,
    min_stabilization_steps=10,
    contribution_threshold=0.05,
    max_instability=0.2,
    embargo_steps=50,
)
STEP = 1000  # far past every step-count gate


def seed_in(stage: str, *, seed: str = SEED, alpha: float = 0.5, **kw: Any) -> SeedState:
    """A seed as a legal history would leave it in `stage`, every gate satisfiable."""
    s = Stage(stage)
    holds = stage in WITH_KERNEL
    fields: dict[str, Any] = {
        "seed": seed,
        "stage": s,
        "blueprint": "conv3x3" if holds else None,
        "kernel_id": "k-abc" if holds else None,
        "init_seed": 7 if holds else None,
        "alpha": alpha if stage in BLENDING else 0.0,
        "blend_target": alpha if holds else 0.0,
        "entered_step": 0,
        "last_step": 0,
        "embargo_until": 10 if stage == "EMBARGOED" else None,
        "version": 5,
    }
    fields.update(kw)
    return SeedState(**fields)


def command_for(trigger: str, *, seed: str = SEED, step: int = STEP, **kw: Any) -> c.SeedCommand:
    """A command for `trigger` whose own arguments pass every gate unless overridden."""
    defaults: dict[str, dict[str, Any]] = {
        "germinate": {"blueprint": "conv3x3", "kernel_id": "k-new", "init_seed": 11},
        "start_grafting": {"improvement": 0.5},
        "fine_tune": {"contribution": 0.5},
        "fossilize": {"contribution": 0.5, "instability": 0.0},
        "adjust_blend": {"alpha": 0.25},
        "set_blend_target": {"target": 0.75},
    }
    args = {**defaults.get(trigger, {}), **kw}
    cls = c.COMMAND_FOR_TRIGGER[trigger]
    return cls(command_id=f"cmd-{trigger}", seed=seed, step=step, **args)


def ctx(config: LifecycleConfig = CONFIG, layer: LayerState | None = LAYER) -> Context:
    """A decision context with the test thresholds and a layer the blueprint fits."""
    return Context(config, layer)


# --- the table ------------------------------------------------------------------------


def test_code_table_equals_spec_table() -> None:
    want = {
        (stage, trigger): expected_dest(stage, trigger)
        for stage in ALL_STAGES
        for trigger in ALL_TRIGGERS
        if expected_dest(stage, trigger) is not None
    }
    got = {
        (src.value, trigger): (src.value if dest is None else dest.value)
        for (src, trigger), dest in TABLE.items()
    }
    assert got == want


def test_transition_specs_cover_exactly_the_spec_triggers() -> None:
    assert {t.trigger for t in TRANSITIONS} == set(ALL_TRIGGERS)
    assert {s.value for s in Stage} == set(ALL_STAGES)
    for spec in TRANSITIONS:
        if spec.trigger in SPEC_TABLE:
            sources, dest = SPEC_TABLE[spec.trigger]
            assert {s.value for s in spec.sources} == set(sources), spec.trigger
            assert spec.dest is not None and spec.dest.value == dest, spec.trigger
        else:
            assert spec.dest is None
            assert {s.value for s in spec.sources} == set(INTERNAL_TABLE[spec.trigger])


@pytest.mark.parametrize("trigger", ALL_TRIGGERS)
@pytest.mark.parametrize("stage", ALL_STAGES)
def test_grid(stage: str, trigger: str) -> None:
    state = seed_in(stage)
    cmd = command_for(trigger)
    dest = expected_dest(stage, trigger)
    if dest is None:
        with pytest.raises(IllegalTransition) as info:
            decide(state, cmd, ctx())
        err = info.value
        assert (err.seed, err.state, err.trigger) == (SEED, stage, trigger)
        assert SEED in str(err) and stage in str(err) and trigger in str(err)
        return
    events = decide(state, cmd, ctx())
    assert len(events) == 1
    (event,) = events
    assert type(event).__name__ == EXPECTED_EVENT[trigger]
    assert isinstance(event, ev.SeedEvent)
    assert (event.seed, event.step) == (SEED, STEP)
    after = evolve(state, event)
    assert after.stage.value == dest
    assert after.version == state.version + 1
    assert after.last_step == STEP


def test_fossilized_is_terminal() -> None:
    state = seed_in("FOSSILIZED")
    for trigger in ALL_TRIGGERS:
        with pytest.raises(IllegalTransition):
            decide(state, command_for(trigger), ctx())


def test_unknown_trigger_is_refused_naming_it() -> None:
    from esper_es.core.lifecycle import fire

    with pytest.raises(IllegalTransition) as info:
        fire(seed_in("TRAINING"), "explode", command_for("cull"), CONFIG, LAYER)
    assert info.value.trigger == "explode"
    assert "unknown trigger" in info.value.reason


def test_command_for_another_seed_is_refused() -> None:
    with pytest.raises(IllegalTransition, match="layer1/0"):
        decide(seed_in("TRAINING"), command_for("cull", seed="layer1/1"), ctx())


# --- gates: refuse below the threshold, pass at it ------------------------------------


def refusal(state: SeedState, cmd: c.SeedCommand, context: Context | None = None) -> str | None:
    """The refusal reason, or None if `decide` accepted the command."""
    try:
        decide(state, cmd, context or ctx())
    except IllegalTransition as err:
        return err.reason
    return None


def test_gate_min_training_steps() -> None:
    state = seed_in("TRAINING", entered_step=5, last_step=5)
    reason = refusal(state, command_for("start_grafting", step=5 + 19))
    assert reason is not None and "19 steps" in reason and "20" in reason
    assert refusal(state, command_for("start_grafting", step=5 + 20)) is None


def test_gate_min_training_steps_zero_passes_immediately() -> None:
    state = seed_in("TRAINING", entered_step=5, last_step=5)
    config = attrs.evolve(CONFIG, min_training_steps=0)
    assert refusal(state, command_for("start_grafting", step=5), ctx(config)) is None


def test_gate_min_improvement_needs_strictly_more() -> None:
    # LifecycleConfig: "improved by more than this", so the threshold itself is not enough.
    state = seed_in("TRAINING")
    below = math.nextafter(0.01, 0.0)
    above = math.nextafter(0.01, 1.0)
    assert refusal(state, command_for("start_grafting", improvement=below)) is not None
    assert refusal(state, command_for("start_grafting", improvement=0.01)) is not None
    assert refusal(state, command_for("start_grafting", improvement=above)) is None
    assert refusal(state, command_for("start_grafting", improvement=float("nan"))) is not None


def test_gate_min_stabilization_steps() -> None:
    state = seed_in("STABILIZATION", entered_step=40, last_step=40)
    reason = refusal(state, command_for("evaluate", step=49))
    assert reason is not None and "9 steps" in reason
    assert refusal(state, command_for("evaluate", step=50)) is None


@pytest.mark.parametrize(
    "trigger,stage", [("fine_tune", "EVALUATING"), ("fossilize", "FINE_TUNING")]
)
def test_gate_contribution_threshold(trigger: str, stage: str) -> None:
    state = seed_in(stage)
    below = math.nextafter(0.05, 0.0)
    reason = refusal(state, command_for(trigger, contribution=below))
    assert reason is not None and "contribution" in reason
    assert refusal(state, command_for(trigger, contribution=0.05)) is None
    assert refusal(state, command_for(trigger, contribution=float("nan"))) is not None


def test_gate_max_instability() -> None:
    state = seed_in("FINE_TUNING")
    above = math.nextafter(0.2, 1.0)
    reason = refusal(state, command_for("fossilize", instability=above))
    assert reason is not None and "instability" in reason
    assert refusal(state, command_for("fossilize", instability=0.2)) is None
    assert refusal(state, command_for("fossilize", instability=float("nan"))) is not None


def test_gate_embargo_steps() -> None:
    culled = seed_in("CULLED", last_step=100)
    (embargoed,) = decide(culled, command_for("embargo", step=100), ctx())
    assert isinstance(embargoed, ev.SeedEmbargoed)
    assert embargoed.until_step == 150
    state = evolve(culled, embargoed)
    assert state.stage is Stage.EMBARGOED and state.embargo_until == 150
    reason = refusal(state, command_for("release", step=149))
    assert reason is not None and "150" in reason
    assert refusal(state, command_for("release", step=150)) is None


def test_gate_alpha_reached_target() -> None:
    short = seed_in("GRAFTING", alpha=0.6, blend_target=0.8)
    reason = refusal(short, command_for("stabilize"))
    assert reason is not None and "alpha" in reason
    reached = seed_in("GRAFTING", alpha=0.8, blend_target=0.8)
    (event,) = decide(reached, command_for("stabilize"), ctx())
    assert isinstance(event, ev.SeedStabilized) and event.alpha == 0.8


def test_gate_blueprint_fits() -> None:
    state = seed_in("DORMANT")
    reason = refusal(state, command_for("germinate", blueprint="transformer"))
    assert reason is not None and "transformer" in reason and "conv3x3" in reason
    assert refusal(state, command_for("germinate", blueprint="mlp")) is None


def test_gate_germinate_needs_a_registered_layer() -> None:
    reason = refusal(seed_in("DORMANT"), command_for("germinate"), ctx(layer=None))
    assert reason is not None and "not registered" in reason


def test_gate_seed_index_in_range() -> None:
    # LAYER has 4 seeds: 0..3.
    last = seed_in("DORMANT", seed="layer1/3")
    assert refusal(last, command_for("germinate", seed="layer1/3")) is None
    beyond = seed_in("DORMANT", seed="layer1/4")
    reason = refusal(beyond, command_for("germinate", seed="layer1/4"))
    assert reason is not None and "0..3" in reason


@pytest.mark.parametrize("alpha", [-0.1, 1.0000001, float("nan"), float("inf")])
def test_adjust_blend_refuses_alpha_outside_unit_interval(alpha: float) -> None:
    assert refusal(seed_in("GRAFTING"), command_for("adjust_blend", alpha=alpha)) is not None


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_adjust_blend_accepts_the_interval_ends(alpha: float) -> None:
    assert refusal(seed_in("GRAFTING"), command_for("adjust_blend", alpha=alpha)) is None


@pytest.mark.parametrize("target", [-0.5, 1.5, float("nan")])
def test_blend_targets_outside_unit_interval_are_refused(target: float) -> None:
    assert refusal(seed_in("TRAINING"), command_for("set_blend_target", target=target)) is not None
    assert refusal(seed_in("DORMANT"), command_for("germinate", blend_target=target)) is not None


def test_germinate_uses_the_configured_default_blend_target() -> None:
    config = attrs.evolve(CONFIG, default_blend_target=0.4)
    (event,) = decide(seed_in("DORMANT"), command_for("germinate"), ctx(config))
    assert isinstance(event, ev.SeedGerminated) and event.blend_target == 0.4
    (explicit,) = decide(seed_in("DORMANT"), command_for("germinate", blend_target=0.9), ctx())
    assert isinstance(explicit, ev.SeedGerminated) and explicit.blend_target == 0.9


# --- L3 / L4 on evolve ----------------------------------------------------------------

ACCEPTED = [
    (stage, trigger)
    for stage in ALL_STAGES
    for trigger in ALL_TRIGGERS
    if expected_dest(stage, trigger) is not None
]


@pytest.mark.parametrize("stage,trigger", ACCEPTED)
def test_evolve_keeps_alpha_and_kernel_rules(stage: str, trigger: str) -> None:
    state = seed_in(stage, alpha=0.7)
    (event,) = decide(state, command_for(trigger), ctx())
    after = evolve(state, event)
    dest = after.stage.value
    assert 0.0 <= after.alpha <= 1.0
    if dest not in BLENDING:
        assert after.alpha == 0.0, "L3: alpha is 0 outside the blending stages"
    if dest in WITH_KERNEL:
        assert after.kernel_id is not None and after.blueprint is not None
    else:
        assert after.kernel_id is None and after.blueprint is None and after.init_seed is None
        assert after.blend_target == 0.0


@pytest.mark.parametrize(
    "stage,trigger",
    [
        ("TRAINING", "cull"),
        ("EVALUATING", "cull"),
        ("FINE_TUNING", "cull"),
        ("GERMINATED", "cancel"),
        ("TRAINING", "cancel"),
        ("GRAFTING", "roll_back"),
        ("STABILIZATION", "roll_back"),
        ("EVALUATING", "roll_back"),
        ("FINE_TUNING", "roll_back"),
    ],
)
def test_culling_cancelling_rolling_back_zero_alpha_and_drop_kernel(
    stage: str, trigger: str
) -> None:
    state = seed_in(stage, alpha=0.9)
    (event,) = decide(state, command_for(trigger, reason="test"), ctx())
    after = evolve(state, event)
    assert after.alpha == 0.0
    assert (after.kernel_id, after.blueprint, after.init_seed) == (None, None, None)


def test_fossilize_keeps_alpha_and_kernel() -> None:
    state = seed_in("FINE_TUNING", alpha=0.8)
    (event,) = decide(state, command_for("fossilize"), ctx())
    after = evolve(state, event)
    assert after.stage is Stage.FOSSILIZED
    assert after.alpha == 0.8 and after.kernel_id == "k-abc"


def test_germinated_seed_starts_at_alpha_zero_with_its_kernel() -> None:
    (event,) = decide(seed_in("DORMANT"), command_for("germinate", blend_target=0.6), ctx())
    after = evolve(seed_in("DORMANT"), event)
    assert after.stage is Stage.GERMINATED
    assert after.alpha == 0.0 and after.blend_target == 0.6
    assert (after.blueprint, after.kernel_id, after.init_seed) == ("conv3x3", "k-new", 11)


def test_release_returns_a_clean_dormant_slot() -> None:
    state = seed_in("EMBARGOED")
    (event,) = decide(state, command_for("release"), ctx())
    after = evolve(state, event)
    assert after == SeedState(SEED, Stage.DORMANT, entered_step=STEP, last_step=STEP, version=6)


def test_full_lifecycle_fold() -> None:
    """A whole life, decided and folded step by step, ends FOSSILIZED with its kernel."""
    state = SeedState.dormant(SEED)
    plan = [
        command_for("germinate", step=0, blend_target=1.0),
        command_for("start_training", step=1),
        command_for("start_grafting", step=21),
        command_for("adjust_blend", step=22, alpha=0.5),
        command_for("adjust_blend", step=23, alpha=1.0),
        command_for("stabilize", step=24),
        command_for("evaluate", step=34),
        command_for("fine_tune", step=35),
        command_for("fossilize", step=36),
    ]
    history: list[ev.Event] = []
    for cmd in plan:
        events = decide(state, cmd, ctx())
        history.extend(events)
        state = fold(state, events)
    assert state.stage is Stage.FOSSILIZED and state.alpha == 1.0 and state.version == 9
    assert fold(SeedState.dormant(SEED), history) == state


# --- evolve refuses impossible histories ----------------------------------------------


def test_evolve_raises_for_an_event_that_cannot_follow() -> None:
    with pytest.raises(InconsistentHistory) as info:
        evolve(SeedState.dormant(SEED), ev.SeedTrainingStarted(seed=SEED, step=1))
    assert info.value.stream == f"seed:{SEED}"
    assert info.value.version == 1
    assert "DORMANT" in info.value.reason


@pytest.mark.parametrize(
    "stage,event",
    [
        ("TRAINING", ev.SeedGerminated(
            seed=SEED, step=1, layer="layer1", blueprint="mlp", kernel_id="k", init_seed=1,
            blend_target=1.0)),
        ("FOSSILIZED", ev.SeedCulled(seed=SEED, step=1)),
        ("DORMANT", ev.BlendAdjusted(seed=SEED, step=1, alpha=0.5)),
        ("FOSSILIZED", ev.BlendAdjusted(seed=SEED, step=1, alpha=0.5)),
        ("CULLED", ev.SeedReleased(seed=SEED, step=1)),
        ("TRAINING", ev.SeedEmbargoed(seed=SEED, step=1, until_step=5)),
        ("DORMANT", ev.BlendTargetSet(seed=SEED, step=1, target=0.5)),
    ],
)  # fmt: skip
def test_evolve_refuses_out_of_place_events(stage: str, event: ev.Event) -> None:
    state = seed_in(stage)
    with pytest.raises(InconsistentHistory) as info:
        evolve(state, event)
    assert info.value.version == state.version + 1


def test_layer_registered_twice_is_inconsistent() -> None:
    e = ev.SeedLayerRegistered(
        layer="layer1", shape_kind="image", channels=8, num_seeds=2, blueprints=["mlp"]
    )
    layer = evolve(None, e)
    assert layer == LayerState("layer1", "image", 8, 2, frozenset({"mlp"}), 1)
    with pytest.raises(InconsistentHistory):
        evolve(layer, e)


def test_run_started_twice_is_inconsistent() -> None:
    e = ev.RunStarted(run_id="r1", master_seed=3, config={})
    run = evolve(None, e)
    assert run == RunState("r1", 3, 1)
    with pytest.raises(InconsistentHistory):
        evolve(run, e)


# --- layer and run commands -----------------------------------------------------------


def register(**kw: Any) -> c.RegisterSeedLayer:
    """A layer registration command, valid unless overridden."""
    args: dict[str, Any] = {
        "command_id": "reg",
        "layer": "layer1",
        "shape_kind": "image",
        "channels": 8,
        "num_seeds": 2,
        "blueprints": ("mlp", "conv3x3", "mlp"),
    }
    args.update(kw)
    return c.RegisterSeedLayer(**args)


def test_register_layer_sorts_and_dedups_blueprints() -> None:
    (event,) = decide(None, register())
    assert isinstance(event, ev.SeedLayerRegistered)
    assert event.blueprints == ["conv3x3", "mlp"]


@pytest.mark.parametrize(
    "kw",
    [{"layer": ""}, {"layer": "a/b"}, {"layer": "a:b"}, {"shape_kind": "cube"},
     {"channels": 0}, {"num_seeds": 0}],
)  # fmt: skip
def test_register_layer_refuses_bad_arguments(kw: dict[str, Any]) -> None:
    with pytest.raises(IllegalTransition):
        decide(None, register(**kw))


def test_register_layer_twice_is_refused() -> None:
    layer = evolve(None, decide(None, register())[0])  # type: ignore[call-overload]
    with pytest.raises(IllegalTransition, match="already registered"):
        decide(layer, register())


def test_start_run_twice_is_refused() -> None:
    start = c.StartRun(command_id="s", run_id="r1", master_seed=1, config={"a": 1})
    (event,) = decide(None, start)
    run = evolve(None, event)  # type: ignore[call-overload]
    with pytest.raises(IllegalTransition, match="already started"):
        decide(run, start)


# --- purity and time ------------------------------------------------------------------


@pytest.mark.parametrize("stage,trigger", ACCEPTED)
def test_decide_is_pure(stage: str, trigger: str) -> None:
    state = seed_in(stage)
    cmd = command_for(trigger)
    context = ctx()
    snapshot = (attrs.evolve(state), attrs.evolve(cmd), attrs.evolve(context))
    first = decide(state, cmd, context)
    second = decide(state, cmd, context)
    assert first == second
    assert (state, cmd, context) == snapshot
    # And evolve too: same state and event give equal states, the input untouched.
    assert evolve(state, first[0]) == evolve(state, first[0])
    assert state == snapshot[0]


def test_decide_with_mutable_payloads_does_not_share_them() -> None:
    config: dict[str, Any] = {"lr": 0.1}
    start = c.StartRun(command_id="s", run_id="r1", master_seed=1, config=config)
    (event,) = decide(None, start)
    assert isinstance(event, ev.RunStarted)
    event.config["lr"] = 99
    assert config == {"lr": 0.1}


def test_step_going_backwards_is_refused() -> None:
    state = seed_in("TRAINING", entered_step=0, last_step=100)
    with pytest.raises(IllegalTransition) as info:
        decide(state, command_for("cull", step=99), ctx())
    assert "precedes" in info.value.reason and "100" in info.value.reason
    assert (info.value.seed, info.value.state, info.value.trigger) == (SEED, "TRAINING", "cull")
    assert decide(state, command_for("cull", step=100), ctx())


def test_unknown_command_type_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        decide(None, c.Command(command_id="x"))


def test_record_fact_records_run_and_controller_facts_only() -> None:
    """RecordFact passes run and controller facts through; lifecycle events must be decided."""
    started = RunState(run_id="r", master_seed=1, version=1)
    stop = ev.TrainingStopped(epoch=1, step=9, reason="completed")
    assert decide(started, c.RecordFact(command_id="f", event=stop)) == (stop,)
    with pytest.raises(IllegalTransition):
        decide(None, c.RecordFact(command_id="f", event=stop))
    culled = ev.SeedCulled(seed="layer1/0", step=1)
    with pytest.raises(TypeError, match="through their commands"):
        decide(SeedState.dormant("layer1/0"), c.RecordFact(command_id="f", event=culled))
