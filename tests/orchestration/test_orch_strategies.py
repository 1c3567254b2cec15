"""The four strategies on crafted situations, executed through the real command bus."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from orch_support import Run

from esper_es.core import commands as c
from esper_es.core import events as ev
from esper_es.core.decisions import (
    AdaptationDecision,
    InvalidDecision,
    SeedStats,
    Strategy,
    UnknownLayer,
)
from esper_es.core.lifecycle import Stage
from esper_es.core.strategies import plan
from esper_es.errors import EXIT_USAGE, UnknownBlueprint

MakeRun = Callable[..., Run]
L = "layer1"


def decision(kind: str, **params: object) -> AdaptationDecision:
    return AdaptationDecision(layer_name=L, adaptation_type=kind, parameters=dict(params))


def stages(run: Run) -> dict[str, Stage]:
    return {sid: run.bus.seed(sid).stage for sid in run.bus.layers[L].seed_ids()}


def test_diversify_germinates_inactive_kinds_into_dormant_slots(make_run: MakeRun) -> None:
    run = make_run({L: 4})
    run.put("layer1/0", Stage.TRAINING, "conv3x3")
    ok, d = run.orchestrator().apply_architecture_modification_sync(
        None, decision("add_neurons", num_seeds=2)
    )
    assert ok and d["strategy"] == "diversify" and d["refused"] == []
    assert [(p["seed"], p["blueprint"]) for p in d["plan"]] == [
        ("layer1/1", "depthwise"),
        ("layer1/2", "norm"),
    ]
    assert stages(run) == {
        "layer1/0": Stage.TRAINING,
        "layer1/1": Stage.GERMINATED,
        "layer1/2": Stage.GERMINATED,
        "layer1/3": Stage.DORMANT,
    }


def test_diversify_follows_the_ranking_and_says_when_slots_run_short(make_run: MakeRun) -> None:
    run = make_run({L: 2})
    run.put("layer1/0", Stage.GRAFTING, "norm")
    orch = run.orchestrator(ranking=lambda layer: ["se_attention", "norm", "conv3x3"])
    ok, d = orch.apply_architecture_modification_sync(None, decision("add_seed", num_seeds=3))
    assert ok
    assert [(p["seed"], p["blueprint"]) for p in d["plan"]] == [("layer1/1", "se_attention")]
    assert "asked for 3 seeds, planned 1" in d["notes"]


def test_diversify_with_no_dormant_slot_plans_nothing(make_run: MakeRun) -> None:
    run = make_run({L: 1})
    run.put("layer1/0", Stage.TRAINING)
    ok, d = run.orchestrator().apply_architecture_modification_sync(None, decision("add_seed"))
    assert not ok and d["plan"] == [] and d["commands"] == []
    assert "no dormant seed" in d["notes"]
    assert stages(run) == {"layer1/0": Stage.TRAINING}
    # The decision and its (empty) plan are still on the record.
    types = [r.type for r in run.db.read(stream="controller")]
    assert types == ["AdaptationDecided", "AdaptationPlanned"]


def test_replace_swaps_the_worst_kernels_in_their_own_slots(make_run: MakeRun) -> None:
    run = make_run({L: 4})
    run.put("layer1/0", Stage.TRAINING, "conv3x3")
    run.put("layer1/1", Stage.GRAFTING, "depthwise")
    run.put("layer1/2", Stage.EVALUATING, "norm")
    stats = {
        "layer1/0": SeedStats(seed="layer1/0", contribution=0.20),
        "layer1/1": SeedStats(seed="layer1/1", contribution=-0.05),
        "layer1/2": SeedStats(seed="layer1/2", contribution=0.01),
    }
    orch = run.orchestrator()
    ok, d = orch.apply_architecture_modification_sync(
        None, decision("optimize_parameters", num_replace=2), stats=stats
    )
    assert ok and d["strategy"] == "replace"
    # Worst first: 1/1 (GRAFTING: roll back), 1/2 (EVALUATING: cull); each slot is embargoed
    # for 0 steps, released and re-germinated with another kind; the free slot 1/3 stays free.
    assert [(p["type"], p["seed"]) for p in d["plan"]] == [
        ("RollBackSeed", "layer1/1"),
        ("CullSeed", "layer1/2"),
        ("EmbargoSeed", "layer1/1"),
        ("ReleaseSeed", "layer1/1"),
        ("GerminateSeed", "layer1/1"),
        ("EmbargoSeed", "layer1/2"),
        ("ReleaseSeed", "layer1/2"),
        ("GerminateSeed", "layer1/2"),
    ]
    assert d["plan"][2]["steps"] == 0
    kinds = {p["seed"]: p["blueprint"] for p in d["plan"] if p["type"] == "GerminateSeed"}
    assert kinds["layer1/1"] not in {"depthwise", "conv3x3"}
    assert kinds["layer1/2"] not in {"norm", "conv3x3", kinds["layer1/1"]}
    assert not d["refused"]
    assert stages(run) == {
        "layer1/0": Stage.TRAINING,  # untouched
        "layer1/1": Stage.GERMINATED,
        "layer1/2": Stage.GERMINATED,
        "layer1/3": Stage.DORMANT,  # the free slot is not used: replacements stay in place
    }


def test_replace_on_a_fossilized_only_layer_refuses_to_act(make_run: MakeRun) -> None:
    run = make_run({L: 2})
    run.put("layer1/0", Stage.FOSSILIZED)
    run.put("layer1/1", Stage.FOSSILIZED, "norm")
    ok, d = run.orchestrator().apply_architecture_modification_sync(
        None, decision("optimize_parameters")
    )
    assert not ok and d["plan"] == []
    assert "no active seed to replace" in d["notes"] and "2 fossilized" in d["notes"]
    assert set(stages(run).values()) == {Stage.FOSSILIZED}


def test_replace_of_named_seeds_records_a_lifecycle_refusal(make_run: MakeRun) -> None:
    run = make_run({L: 2})
    run.put("layer1/0", Stage.FOSSILIZED)
    run.put("layer1/1", Stage.TRAINING, "norm")
    ok, d = run.orchestrator().apply_architecture_modification_sync(
        None, decision("optimize_parameters", seeds=["layer1/0", "layer1/1"])
    )
    # FOSSILIZED has no way out, so nothing is planned for it; the TRAINING seed is culled
    # and its slot takes another kind at once.
    assert [(p["type"], p["seed"]) for p in d["plan"]] == [
        ("CullSeed", "layer1/1"),
        ("EmbargoSeed", "layer1/1"),
        ("ReleaseSeed", "layer1/1"),
        ("GerminateSeed", "layer1/1"),
    ]
    assert "layer1/0 cannot be removed from FOSSILIZED" in d["notes"]
    assert ok


def test_a_command_the_lifecycle_refuses_at_execution_is_recorded_not_forced(
    make_run: MakeRun,
) -> None:
    run = make_run({L: 2})
    run.put("layer1/0", Stage.TRAINING)
    orch = run.orchestrator()
    ticket = orch.submit(decision("optimize_parameters"))
    planned = orch.commands_for_boundary(5)
    # Between planning and execution the seed moves on (a lifecycle command earlier in the
    # same boundary): its cull is now refused, and the refusal goes on the record.
    graft = c.StartGrafting(command_id="drv-1", seed="layer1/0", step=5, improvement=0.2)
    outcomes = run.bus.execute_all([graft, *planned])
    orch.settle(outcomes)
    ok, d = ticket.result(0)
    assert not ok
    # The cull is refused, and so is the rest of the swap in that slot.
    assert [r["command"] for r in d["refused"]] == [
        "CullSeed", "EmbargoSeed", "ReleaseSeed", "GerminateSeed",
    ]  # fmt: skip
    assert d["refused"][:1] == [
        {
            "command": "CullSeed",
            "command_id": d["plan"][0]["command_id"],
            "seed": "layer1/0",
            "stage": "GRAFTING",
            "reason": d["refused"][0]["reason"],
        }
    ]
    assert "no transition 'cull' from GRAFTING" in d["refused"][0]["reason"]
    refusals = [r for r in run.db.read(stream="controller") if r.type == "CommandRefused"]
    assert len(refusals) == 4 and {r.correlation_id for r in refusals} == {d["decision_id"]}
    assert run.bus.seed("layer1/0").stage is Stage.GRAFTING


def test_specialize_keeps_the_best_raises_its_target_and_removes_the_rest(
    make_run: MakeRun,
) -> None:
    run = make_run({L: 4})
    run.put("layer1/0", Stage.STABILIZATION, "conv3x3")
    run.put("layer1/1", Stage.FINE_TUNING, "depthwise")
    run.put("layer1/2", Stage.TRAINING, "norm")
    run.put("layer1/3", Stage.FOSSILIZED, "se_attention")
    run.bus.execute_all([c.SetBlendTarget(command_id="t", seed="layer1/1", step=0, target=0.4)])
    stats = {
        "layer1/0": SeedStats(seed="layer1/0", contribution=0.01),
        "layer1/1": SeedStats(seed="layer1/1", contribution=0.30),
        "layer1/2": SeedStats(seed="layer1/2", improvement=0.5),
    }
    ok, d = run.orchestrator().apply_architecture_modification_sync(
        None, decision("remove_seed", target=0.9), stats=stats
    )
    assert ok and d["strategy"] == "specialize"
    assert [(p["type"], p["seed"]) for p in d["plan"]] == [
        ("SetBlendTarget", "layer1/1"),
        ("RollBackSeed", "layer1/0"),
        ("CullSeed", "layer1/2"),
    ]
    assert d["plan"][0]["target"] == 0.9
    assert run.bus.seed("layer1/1").blend_target == 0.9
    assert stages(run) == {
        "layer1/0": Stage.ROLLED_BACK,
        "layer1/1": Stage.FINE_TUNING,
        "layer1/2": Stage.CULLED,
        "layer1/3": Stage.FOSSILIZED,  # kept for good, never touched
    }


def test_specialize_with_named_seeds_removes_exactly_those(make_run: MakeRun) -> None:
    run = make_run({L: 4})
    run.put("layer1/0", Stage.FOSSILIZED, "conv3x3")
    run.put("layer1/1", Stage.FINE_TUNING, "depthwise")
    run.put("layer1/2", Stage.TRAINING, "norm")
    stats = {
        "layer1/0": SeedStats(seed="layer1/0", contribution=0.30),
        "layer1/1": SeedStats(seed="layer1/1", contribution=0.004),
        "layer1/2": SeedStats(seed="layer1/2", improvement=0.5),
    }
    ok, d = run.orchestrator().apply_architecture_modification_sync(
        None, decision("remove_seed", seeds=["layer1/1"]), stats=stats
    )
    assert ok and [(p["type"], p["seed"]) for p in d["plan"]] == [("CullSeed", "layer1/1")]
    assert "layer1/2 already has blend target 1" in d["notes"]
    assert stages(run) == {
        "layer1/0": Stage.FOSSILIZED,
        "layer1/1": Stage.CULLED,
        "layer1/2": Stage.TRAINING,  # young and unmeasured: left to its gates
        "layer1/3": Stage.DORMANT,
    }


def test_ensemble_fills_every_dormant_slot_and_sets_equal_targets(make_run: MakeRun) -> None:
    run = make_run({L: 4})
    run.put("layer1/0", Stage.GRAFTING, "conv3x3")
    run.put("layer1/1", Stage.FOSSILIZED, "norm")
    ok, d = run.orchestrator().apply_architecture_modification_sync(
        None, decision("modify_architecture")
    )
    assert ok and d["strategy"] == "ensemble"
    # Three non-fossilized seeds after the plan (1 active + 2 new): target 1/3 each.
    assert [(p["type"], p["seed"]) for p in d["plan"]] == [
        ("SetBlendTarget", "layer1/0"),
        ("GerminateSeed", "layer1/2"),
        ("GerminateSeed", "layer1/3"),
    ]
    assert {p.get("blueprint") for p in d["plan"][1:]} == {"depthwise", "se_attention"}
    for sid in ("layer1/0", "layer1/2", "layer1/3"):
        assert run.bus.seed(sid).blend_target == pytest.approx(1 / 3)
    assert run.bus.seed("layer1/1").stage is Stage.FOSSILIZED


def test_ensemble_cycles_kinds_when_slots_outnumber_them(make_run: MakeRun) -> None:
    run = make_run({L: 5}, kinds=("conv3x3", "norm"))
    ok, d = run.orchestrator().apply_architecture_modification_sync(
        None, decision("modify_architecture", target=0.5)
    )
    assert ok
    assert [p["blueprint"] for p in d["plan"]] == ["conv3x3", "norm"] * 2 + ["conv3x3"]
    assert {p["blend_target"] for p in d["plan"]} == {0.5}


def test_parameters_strategy_overrides_the_type(make_run: MakeRun) -> None:
    run = make_run({L: 3})
    ok, d = run.orchestrator().apply_architecture_modification_sync(
        None, decision("add_seed", strategy="ENSEMBLE")
    )
    assert ok and d["strategy"] == "ensemble" and len(d["plan"]) == 3
    decided = next(r for r in run.db.read(stream="controller") if r.type == "AdaptationDecided")
    assert decided.payload["strategy"] == "ensemble"


def test_unknown_layer_is_a_typed_error_naming_the_known_layers(make_run: MakeRun) -> None:
    run = make_run({L: 2, "layer2": 1})
    orch = run.orchestrator()
    head = run.db.head_seq()
    bad = AdaptationDecision(layer_name="layer9", adaptation_type="add_seed")
    with pytest.raises(UnknownLayer, match=r"'layer9'.*known layers: layer1, layer2") as info:
        orch.apply_architecture_modification_sync(None, bad)
    assert info.value.exit_code == EXIT_USAGE and info.value.known == ("layer1", "layer2")
    with pytest.raises(UnknownLayer):
        orch.submit(bad)
    assert run.db.head_seq() == head and orch.pending() == 0


def test_unknown_strategy_or_type_is_a_clear_error(make_run: MakeRun) -> None:
    orch = make_run({L: 2}).orchestrator()
    with pytest.raises(InvalidDecision, match="unknown strategy 'grow'; known: diversify"):
        orch.submit(decision("add_seed", strategy="grow"))
    with pytest.raises(InvalidDecision, match="unknown adaptation_type 'prune'"):
        orch.submit(decision("prune"))
    with pytest.raises(InvalidDecision, match="num_seeds"):
        orch.apply_architecture_modification_sync(None, decision("add_seed", num_seeds=0))


def test_a_named_blueprint_that_does_not_fit_is_refused_before_planning(
    make_run: MakeRun,
) -> None:
    orch = make_run({L: 2}).orchestrator()
    with pytest.raises(UnknownBlueprint, match="'lora' for layer 'layer1'; known: conv3x3"):
        orch.apply_architecture_modification_sync(None, decision("add_seed", blueprint="lora"))


def test_plan_is_pure_and_torch_free(make_run: MakeRun) -> None:
    run = make_run({L: 3})
    run.put("layer1/0", Stage.TRAINING, "conv3x3")
    ids = iter(f"c{i}" for i in range(100))
    args = {
        "layer": run.bus.layers[L],
        "seeds": dict(run.bus.seeds),
        "stats": {},
        "candidates": ["norm", "conv3x3", "depthwise"],
        "step": 9,
        "germination": lambda seed, bp, cid: (f"k-{bp}", 1),
    }
    d = AdaptationDecision(layer_name=L, adaptation_type="add_seed", decision_id="dec")
    p1 = plan(d, new_id=lambda: next(ids), **args)  # type: ignore[arg-type]
    ids = iter(f"c{i}" for i in range(100))
    p2 = plan(d, new_id=lambda: next(ids), **args)  # type: ignore[arg-type]
    assert p1 == p2 and p1.strategy is Strategy.DIVERSIFY
    assert all(cmd.correlation_id == "dec" and cmd.step == 9 for cmd in p1.commands)
    assert [cmd.blueprint for cmd in p1.commands] == ["norm", "depthwise"]  # type: ignore[attr-defined]
    assert isinstance(p1.commands[0], c.GerminateSeed)
    assert ev.AdaptationPlanned(
        decision_id="dec", strategy="diversify", commands=p1.describe(), notes="", step=9
    )
