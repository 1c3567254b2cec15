"""The public testing API: strategies, user subclasses, and counterexamples that name the bug."""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import ClassVar

import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant

from esper_es.check_lifecycle import CheckResult, check_lifecycle
from esper_es.core import commands as c
from esper_es.core import lifecycle
from esper_es.core.config import LifecycleConfig
from esper_es.core.lifecycle import Stage
from esper_es.testing import (
    LayerSpec,
    LifecycleStateMachine,
    ModelSeed,
    expected_refusal,
    lifecycle_configs,
    seed_commands,
)

SEEDS = ("a/0", "a/1", "ghost/0")
BLUEPRINTS = ("mlp", "nope")


def _steps(counterexample: str) -> list[str]:
    """The rule calls of a printed program (not the set-up, teardown or the failing check)."""
    return [
        line
        for line in counterexample.splitlines()
        if line.startswith("state.")
        and not line.startswith(("state.teardown", "state = "))
        and "# fails" not in line
    ]


# --- strategies -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", c.SEED_COMMANDS, ids=lambda k: k.__name__)
def test_seed_commands_produce_every_kind(kind: type[c.SeedCommand]) -> None:
    found = find(
        seed_commands(SEEDS, BLUEPRINTS),
        lambda cmd: type(cmd) is kind,
        settings=settings(database=None, max_examples=2000),
    )
    assert found.seed in SEEDS


@given(seed_commands(SEEDS, BLUEPRINTS, max_step=50))
def test_seed_commands_stay_in_their_domain(cmd: c.SeedCommand) -> None:
    assert cmd.seed in SEEDS
    assert 0 <= cmd.step <= 50
    if isinstance(cmd, c.GerminateSeed):
        assert cmd.blueprint in BLUEPRINTS
        assert cmd.blend_target is None or -0.5 <= cmd.blend_target <= 1.5
    if isinstance(cmd, c.AdjustBlend):
        assert -0.5 <= cmd.alpha <= 1.5  # never NaN: the comparison would be False
    if isinstance(cmd, c.SetBlendTarget):
        assert -0.5 <= cmd.target <= 1.5


def test_seed_commands_include_alphas_outside_the_unit_interval_and_absurd_telemetry() -> None:
    quiet = settings(database=None, max_examples=5000)
    adjust = seed_commands(SEEDS, BLUEPRINTS, triggers=["adjust_blend"])
    assert find(adjust, lambda cmd: cmd.alpha < 0, settings=quiet).alpha >= -0.5  # type: ignore[attr-defined]
    assert find(adjust, lambda cmd: cmd.alpha > 1, settings=quiet).alpha <= 1.5  # type: ignore[attr-defined]
    graft = seed_commands(SEEDS, BLUEPRINTS, triggers=["start_grafting"])
    find(graft, lambda cmd: math.isnan(cmd.improvement), settings=quiet)  # type: ignore[attr-defined]
    find(graft, lambda cmd: math.isinf(cmd.improvement), settings=quiet)  # type: ignore[attr-defined]


def test_seed_commands_refuse_unknown_triggers_and_empty_domains() -> None:
    with pytest.raises(ValueError, match="unknown triggers \\['explode'\\]"):
        seed_commands(SEEDS, BLUEPRINTS, triggers=["explode"])
    with pytest.raises(ValueError, match="seed id"):
        seed_commands((), BLUEPRINTS)
    with pytest.raises(ValueError, match="blueprint"):
        seed_commands(SEEDS, ())


@given(lifecycle_configs())
def test_lifecycle_configs_are_valid(config: LifecycleConfig) -> None:
    assert isinstance(config, LifecycleConfig)
    assert 0.0 <= config.default_blend_target <= 1.0
    assert config.max_instability >= 0.0


# --- the model ----------------------------------------------------------------------------


def test_model_refuses_off_table_pairs_and_gated_commands() -> None:
    cfg = LifecycleConfig(min_training_steps=5)
    layers = {"a": LayerSpec("a", 2, ("mlp",))}
    training = ModelSeed("TRAINING", entered_step=10, last_step=10)
    graft = c.StartGrafting(command_id="x", seed="a/0", step=14, improvement=0.5)
    assert expected_refusal(training, graft, cfg, layers) == "too few steps in TRAINING"
    on_time = c.StartGrafting(command_id="x", seed="a/0", step=15, improvement=0.5)
    assert expected_refusal(training, on_time, cfg, layers) is None
    infinite = c.StartGrafting(command_id="x", seed="a/0", step=15, improvement=math.inf)
    assert expected_refusal(training, infinite, cfg, layers) is not None
    fossilize = c.FossilizeSeed(command_id="x", seed="a/0", step=15, contribution=1.0)
    assert (
        expected_refusal(training, fossilize, cfg, layers)
        == "no transition fossilize from TRAINING"
    )
    dormant = ModelSeed()
    ok = c.GerminateSeed(command_id="x", seed="a/1", blueprint="mlp", kernel_id="k", init_seed=0)
    assert expected_refusal(dormant, ok, cfg, layers) is None
    slot = c.GerminateSeed(command_id="x", seed="a/2", blueprint="mlp", kernel_id="k", init_seed=0)
    assert expected_refusal(dormant, slot, cfg, layers) == "no such slot"


# --- a user's own config and command source -------------------------------------------------

_SEEN: Counter[str] = Counter()


class GerminateTrainCull(LifecycleStateMachine):
    """A user's controller that only ever germinates, trains and culls, on their own layer."""

    config = LifecycleConfig(min_training_steps=3, embargo_steps=5)
    layers = (LayerSpec("block", 2, ("lora",)),)
    guided = False
    ALLOWED: ClassVar[set[str]] = {
        "SeedLayerRegistered",
        "SeedGerminated",
        "SeedTrainingStarted",
        "SeedCulled",
        "CommandRefused",
    }

    @classmethod
    def command_strategy(
        cls, seed_ids: tuple[str, ...] | list[str], blueprints: tuple[str, ...] | list[str]
    ) -> st.SearchStrategy[c.SeedCommand]:
        seeds = [s for s in seed_ids if s.startswith("block/")]
        return seed_commands(seeds, ("lora",), triggers=["germinate", "start_training", "cull"])

    @invariant()
    def only_my_commands_reach_the_log(self) -> None:
        types = {row[0] for row in self.db.connection.execute("SELECT DISTINCT type FROM events")}
        assert types <= self.ALLOWED, f"unexpected events {types - self.ALLOWED}"
        _SEEN.update(types)


def test_user_subclass_with_own_config_and_command_source_passes() -> None:
    _SEEN.clear()
    result = check_lifecycle(
        GerminateTrainCull.config, examples=40, seed=5, machine=GerminateTrainCull
    )
    assert result.passed, result.format()
    # The user's commands really ran, through to culling, and nothing else did.
    assert {"SeedGerminated", "SeedTrainingStarted", "SeedCulled", "CommandRefused"} <= set(_SEEN)
    assert set(result.stages_reached) == {"DORMANT", "GERMINATED", "TRAINING", "CULLED"}


# --- counterexamples ------------------------------------------------------------------------


class NoCulling(LifecycleStateMachine):
    """A user invariant that is simply wrong: seeds do get culled."""

    @invariant()
    def no_seed_is_ever_culled(self) -> None:
        for seed in self.bus.seeds.values():
            assert seed.stage is not Stage.CULLED, f"seed {seed.seed} was culled"


def test_failing_user_invariant_gives_a_short_named_counterexample() -> None:
    result = check_lifecycle(
        LifecycleConfig(min_training_steps=0), examples=100, seed=9, machine=NoCulling, steps=20
    )
    assert not result.passed
    assert result.invariant == "no_seed_is_ever_culled"
    assert result.error is not None and "was culled" in result.error
    text = result.counterexample
    assert text is not None
    assert text.startswith("state = NoCulling()")
    assert "state.no_seed_is_ever_culled()  # fails" in text
    assert "CullSeed(" in text and "GerminateSeed(" in text and "StartTraining(" in text
    # Shrunk: germinate, train, cull, and at most a step or two of noise.
    assert len(_steps(text)) <= 5, text
    # The built-in invariants' echo lines are stripped; the report reads as a program.
    assert "L1_only_table_transitions" not in text
    assert "no_seed_is_ever_culled" in result.format()
    assert json.loads(json.dumps(result.to_json()))["invariant"] == "no_seed_is_ever_culled"


class EarlyLifecycle(LifecycleStateMachine):
    """Only the commands around germination, on one slot: a quick probe of the first rows."""

    layers = (LayerSpec("a", 1, ("mlp",)),)
    guided = False

    @classmethod
    def command_strategy(
        cls, seed_ids: tuple[str, ...] | list[str], blueprints: tuple[str, ...] | list[str]
    ) -> st.SearchStrategy[c.SeedCommand]:
        triggers = ["germinate", "start_training", "cancel", "cull", "embargo"]
        return seed_commands(seed_ids, blueprints, triggers=triggers)


def test_wrong_row_in_the_code_is_caught_by_l1(monkeypatch: pytest.MonkeyPatch) -> None:
    """A transition the SPEC does not have (cull from GERMINATED), added to the code's table."""
    monkeypatch.setitem(lifecycle.TABLE, (Stage.GERMINATED, "cull"), Stage.CULLED)  # type: ignore[index]
    lifecycle.MACHINE.add_transition("cull", Stage.GERMINATED, Stage.CULLED)
    try:
        result = check_lifecycle(
            LifecycleConfig(), examples=200, seed=1, machine=EarlyLifecycle, steps=10
        )
    finally:
        del lifecycle.MACHINE.events["cull"].transitions[Stage.GERMINATED.value]
    assert not result.passed
    assert result.invariant == "L1_only_table_transitions"
    assert result.error is not None and "SPEC §2 refuses it" in result.error
    assert result.counterexample is not None and "CullSeed(" in result.counterexample
    assert len(_steps(result.counterexample)) <= 4, result.counterexample


def test_machine_is_restored_after_the_wrong_row_test() -> None:
    assert (Stage.GERMINATED, "cull") not in lifecycle.TABLE
    assert "GERMINATED" not in lifecycle.MACHINE.events["cull"].transitions


def test_check_result_reports_a_pass_and_refuses_zero_examples() -> None:
    result = check_lifecycle(LifecycleConfig(), examples=3, seed=0)
    assert result == CheckResult(passed=True, examples=3, stages_reached=result.stages_reached)
    assert result.format().startswith("lifecycle check passed: 3 examples")
    with pytest.raises(ValueError, match="at least 1"):
        check_lifecycle(LifecycleConfig(), examples=0)
