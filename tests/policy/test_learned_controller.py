"""The learned controller without a trainer: triggers, Thompson choices, what it records."""

from __future__ import annotations

from collections import Counter

import pytest

from esper_es.config import ConfigError, config_from_dict
from esper_es.controller import ControllerConfig, LayerTelemetry, SeedTelemetryView, Telemetry
from esper_es.core import events as ev
from esper_es.core.bandit import fit
from esper_es.core.canonical import canonical_json
from esper_es.library.database import OutcomeRow
from esper_es.policy.contexts import ContextRow
from esper_es.policy.features import action_features, context_of, feature_names
from esper_es.policy.fitting import rows_digest, training_rows
from esper_es.policy.learned import LearnedController, controller_for

BLUEPRINTS = ("conv3x3", "lora", "mlp")
CONFIG = ControllerConfig(kind="learned", cooldown_steps=0, max_adaptations_per_epoch=100)


def layer(name: str, *seeds: SeedTelemetryView, slots: int = 2) -> LayerTelemetry:
    views = list(seeds) + [SeedTelemetryView(seed=f"{name}/{i}") for i in range(len(seeds), slots)]
    return LayerTelemetry(name=name, num_seeds=slots, seeds=tuple(views), blueprints=BLUEPRINTS)


def plateau(step: int, *layers: LayerTelemetry) -> Telemetry:
    """A boundary where validation loss is flat: the heuristic's plateau rule fires."""
    return Telemetry(
        step=step,
        epoch=step // 10,
        steps_per_epoch=10,
        val_loss_history=(0.5, 0.5, 0.5),
        layers=layers or (layer("layer1"), layer("layer2")),
    )


def fitted(rows: list[tuple[dict[str, float], float]]) -> ev.PolicyFitted:
    names = feature_names([("layer1", BLUEPRINTS), ("layer2", BLUEPRINTS)])
    post = fit(names, rows, prior_scale=0.02, noise=0.01)
    return ev.PolicyFitted(
        library="lib.db", posterior=post.to_dict(), prior_scale=0.02, noise=0.01,
        fossil_bonus=0.02, rows_digest=rows_digest(rows),
    )  # fmt: skip


def controller(rows: list[tuple[dict[str, float], float]], seed: int = 0) -> LearnedController:
    event = fitted(rows)
    return LearnedController(CONFIG, seed, source=lambda: event)


EVIDENCE = [
    (action_features({"occupancy": 0.0}, "diversify", lay, bp), 0.03 if good else -0.01)
    for _ in range(10)
    for lay in ("layer1", "layer2")
    for bp in BLUEPRINTS
    for good in [(lay, bp) == ("layer2", "mlp")]
]


def choices(c: LearnedController, n: int = 150) -> Counter[tuple[str, str, str]]:
    out: Counter[tuple[str, str, str]] = Counter()
    for step in range(100, 100 + n):
        (d,) = c.decide(plateau(step))
        out[(d.adaptation_type, d.layer_name, str(d.parameters.get("blueprint")))] += 1
    return out


def test_config_kind_learned_builds_a_learned_controller() -> None:
    cfg = config_from_dict({"controller": {"kind": "learned", "learned": {"noise": 0.02}}})
    assert isinstance(controller_for(cfg.controller, 0), LearnedController)
    assert cfg.to_dict()["controller"]["learned"]["noise"] == 0.02
    assert config_from_dict(cfg.to_dict()) == cfg
    assert config_from_dict({}).to_dict()["controller"]["kind"] == "heuristic"
    with pytest.raises(ConfigError, match=r"controller\.kind"):
        config_from_dict({"controller": {"kind": "oracle"}})


def test_a_clearly_better_arm_is_chosen_more_after_evidence() -> None:
    before = choices(controller([]))
    after = choices(controller(EVIDENCE))
    best = ("add_seed", "layer2", "mlp")
    assert before[best] < 0.35 * sum(before.values())  # the prior spreads the choices
    assert len(before) >= 4
    assert after[best] > 0.8 * sum(after.values())


def test_choices_are_a_function_of_the_telemetry_and_the_master_seed() -> None:
    a, b = controller(EVIDENCE, seed=3), controller(EVIDENCE, seed=3)
    t = plateau(120)
    assert a.decide(t) == b.decide(t)
    assert a.take_facts() == b.take_facts()
    assert a.decide(t) == a.decide(t)  # no state carried between calls
    other = controller(EVIDENCE, seed=4)
    other.decide(t)
    a.decide(t)
    (mine,), (theirs,) = a.take_facts(), other.take_facts()
    assert isinstance(mine, ev.PolicySampled) and isinstance(theirs, ev.PolicySampled)
    assert mine.theta != theirs.theta


def test_the_recorded_draw_explains_the_decision() -> None:
    c = controller(EVIDENCE, seed=1)
    (d,) = c.decide(plateau(130))
    (fact,) = c.take_facts()
    assert c.take_facts() == []  # handed over once
    assert isinstance(fact, ev.PolicySampled)
    post, digest = c.policy(plateau(130))
    assert fact.posterior_digest == digest
    scores = [post.predict(x["features"], fact.theta) for x in fact.candidates]
    assert scores == [x["score"] for x in fact.candidates]
    (i,) = fact.chosen
    assert scores[i] == max(scores)
    chosen = fact.candidates[i]
    assert (chosen["layer"], chosen["blueprint"]) == (d.layer_name, d.parameters["blueprint"])
    assert "learned policy" in d.reason and "plateau" in d.reason
    # Every candidate's features were read from this telemetry.
    ctx = context_of(plateau(130).to_dict(), chosen["layer"])
    assert chosen["features"] == action_features(
        ctx, chosen["strategy"], chosen["layer"], chosen["blueprint"]
    )


def test_a_rule_replace_keeps_its_seeds_and_the_policy_picks_the_kind() -> None:
    weak = SeedTelemetryView(
        seed="layer1/0", stage="STABILIZATION", alpha=0.5, blueprint="mlp", contribution=-0.02
    )
    t = plateau(140, layer("layer1", weak), layer("layer2"))
    c = controller([])
    decisions = c.decide(t)
    (fact,) = c.take_facts()
    assert isinstance(fact, ev.PolicySampled)
    kinds = {(x["strategy"], x["layer"]) for x in fact.candidates}
    # layer1 has an underperforming seed: the rules REPLACE it (the policy picks the kind)
    # and layer1 is not grown besides; layer2 is grown by the policy's choice.
    assert ("replace", "layer1") in kinds
    replace = [d for d in decisions if d.adaptation_type == "optimize_parameters"]
    assert len(replace) == 1 and replace[0].parameters["seeds"] == ["layer1/0"]
    assert replace[0].parameters["blueprint"] != "mlp"
    grown = [d for d in decisions if d.adaptation_type != "optimize_parameters"]
    assert [d.layer_name for d in grown] == ["layer2"]


def test_growth_candidates_span_strategies_layers_and_kinds() -> None:
    held = SeedTelemetryView(
        seed="layer1/0", stage="STABILIZATION", alpha=0.5, blueprint="mlp", contribution=0.01
    )
    c = controller([])
    c.decide(plateau(150, layer("layer1", held), layer("layer2")))
    (fact,) = c.take_facts()
    assert isinstance(fact, ev.PolicySampled)
    got = {(x["strategy"], x["layer"], x["blueprint"]) for x in fact.candidates}
    assert got == (
        {("diversify", "layer1", b) for b in ("conv3x3", "lora")}  # mlp is active there
        | {("ensemble", "layer1", b) for b in BLUEPRINTS}
        | {("replace", "layer1", b) for b in ("conv3x3", "lora")}
        | {("diversify", "layer2", b) for b in BLUEPRINTS}
    )


def test_no_trigger_no_choice_and_no_fact() -> None:
    c = controller([])
    t = Telemetry(step=5, steps_per_epoch=10, val_loss_history=(1.0, 0.5, 0.2),
                  layers=(layer("layer1"),))  # fmt: skip
    assert c.decide(t) == []
    assert c.take_facts() == []


def test_training_rows_join_contexts_of_other_runs_learned_outcomes() -> None:
    def outcome(run: str, seed: str, kind: str, result: str, value: float | None) -> OutcomeRow:
        return OutcomeRow(run, "main", seed, f"k-{run}-{seed}", "mlp", "{}", kind, result,
                          value, 10, 5, 50, 1.0)  # fmt: skip

    def context(run: str, seed: str) -> ContextRow:
        ctx = canonical_json({"occupancy": 0.5, "plateau": 0.0, "progress": 0.1})
        return ContextRow(run, "main", seed, f"k-{run}-{seed}", "layer1", "diversify", 5, ctx)

    outcomes = [
        outcome("a", "layer1/0", "image", "fossilized", 0.01),
        outcome("a", "layer1/1", "image", "culled", None),
        outcome("a", "layer2/0", "image", "rolled_back", 0.5),  # says nothing of the kernel
        outcome("b", "layer1/0", "sequence", "culled", -0.5),  # another shape kind
        outcome("me", "layer1/0", "image", "culled", -0.5),  # this run's own
        outcome("a", "layer2/1", "image", "culled", -0.5),  # no context recorded
    ]
    contexts = [context(r, s) for r, s in [("a", "layer1/0"), ("a", "layer1/1"),
                                          ("a", "layer2/0"), ("b", "layer1/0"),
                                          ("me", "layer1/0")]]  # fmt: skip
    rows = training_rows(outcomes, contexts, run_id="me", shape_kinds=["image"], fossil_bonus=0.02)
    assert [y for _, y in rows] == [pytest.approx(0.03), 0.0]
    features, _ = rows[0]
    assert features["blueprint:mlp"] == 1.0 and features["strategy:diversify*occupancy"] == 0.5
