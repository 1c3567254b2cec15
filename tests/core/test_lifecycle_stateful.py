"""L1-L3, L5, L6 (and L4's state part) over thousands of random command sequences.

Each example drives a real `CommandBus` over a real run database through up to 30 rules
(single commands, batches of 1-5, stage-legal commands, forward walks, time passing), most
commands illegal or gated; the invariants are checked after every rule.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, settings

from esper_es.check_lifecycle import check_lifecycle
from esper_es.command_bus import CommandBus
from esper_es.core import commands as c
from esper_es.core import lifecycle
from esper_es.core.config import LifecycleConfig
from esper_es.core.lifecycle import Stage
from esper_es.errors import IllegalTransition
from esper_es.store.database import RunDatabase
from esper_es.testing import LayerSpec, LifecycleStateMachine

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

#: Every gate as open as its type allows, so whole lifecycles happen within 30 rules.
PERMISSIVE = LifecycleConfig(
    min_training_steps=0,
    min_improvement=-1e9,
    min_stabilization_steps=0,
    contribution_threshold=-1e9,
    max_instability=1e9,
    embargo_steps=0,
)


class DefaultLifecycle(LifecycleStateMachine):
    """The shipped default thresholds (20 training steps, a 50-step embargo, ...)."""


class PermissiveLifecycle(LifecycleStateMachine):
    """All gates at zero, and one wider layer, so fossilization and release are common."""

    config = PERMISSIVE
    layers = (
        LayerSpec("stem", 3, ("conv3x3", "depthwise")),
        LayerSpec("head", 1, ("mlp",)),
    )


TestDefaultLifecycle = DefaultLifecycle.TestCase
TestDefaultLifecycle.settings = settings(
    max_examples=200, stateful_step_count=30, deadline=None, suppress_health_check=_QUIET
)

TestPermissiveLifecycle = PermissiveLifecycle.TestCase
TestPermissiveLifecycle.settings = settings(
    max_examples=200, stateful_step_count=30, deadline=None, suppress_health_check=_QUIET
)


def _reached(
    config: LifecycleConfig, wanted: set[str], examples: int, first_seed: int, **kwargs: Any
) -> set[str]:
    """The stages reached over runs from `first_seed` on, each checked in full, until `wanted`
    are all reached (or six runs were made).

    A fixed seed does not pin hypothesis's draws: they shift with what else the process ran
    and imported (`pytest -n 2 tests/store tests/core` drew no ROLLED_BACK from seed 7 in 150
    permissive examples where the whole suite did), so one seed's coverage is not a test.
    """
    reached: set[str] = set()
    for seed in range(first_seed, first_seed + 6):
        result = check_lifecycle(config, examples=examples, seed=seed, **kwargs)
        assert result.passed, result.format()
        reached |= set(result.stages_reached)
        if wanted <= reached:
            break
    return reached


def test_permissive_run_reaches_every_stage() -> None:
    """The suite is not vacuous: full lifecycles, embargoes and releases really happen."""
    everything = {s.value for s in Stage}
    reached = _reached(PERMISSIVE, everything, 150, 7, machine=PermissiveLifecycle)
    assert reached == everything, f"never reached: {sorted(everything - reached)}"


def test_default_thresholds_still_reach_fossilization() -> None:
    """With the shipped gates (20 steps of training, a 50-step embargo) seeds still get through."""
    wanted = {"FOSSILIZED", "EMBARGOED"}
    reached = _reached(LifecycleConfig(), wanted, 120, 11)
    assert wanted <= reached, f"never reached: {sorted(wanted - reached)}"


def test_stage_counter_counts_examples() -> None:
    """`stage_counter` records, per example, the stages any seed reached."""
    counter: Counter[str] = Counter()

    class Counted(PermissiveLifecycle):
        stage_counter = counter

    result = check_lifecycle(PERMISSIVE, examples=20, seed=3, machine=Counted)
    assert result.passed, result.format()
    # check_lifecycle counts into its own counter; running the class directly uses ours.
    assert counter == Counter()
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        Counted,
        settings=settings(max_examples=20, stateful_step_count=30, deadline=None, database=None),
    )
    assert counter["DORMANT"] >= 20  # every example starts with dormant seeds
    assert counter["FOSSILIZED"] >= 1


@pytest.mark.slow
def test_many_more_sequences() -> None:
    """The long run: thousands of examples, default and permissive thresholds."""
    for config in (LifecycleConfig(), PERMISSIVE):
        result = check_lifecycle(config, examples=2000, steps=50)
        assert result.passed, result.format()


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_telemetry_is_refused_not_a_failed_commit(tmp_path: Path, bad: float) -> None:
    """Found by this suite: `improvement=inf` passed the gate, then the commit of the whole
    batch failed because canonical JSON cannot hold it. Now the gates refuse it."""
    with RunDatabase.create(tmp_path / "run.db", "r", audit=False) as db:
        bus = CommandBus(db, PERMISSIVE)
        layer = c.RegisterSeedLayer(
            command_id="l", layer="a", shape_kind="image", channels=4, num_seeds=1,
            blueprints=("mlp",),
        )  # fmt: skip
        germinate = c.GerminateSeed(
            command_id="g", seed="a/0", blueprint="mlp", kernel_id="k", init_seed=0
        )
        assert all(o.accepted for o in bus.execute_all([layer, germinate]))
        assert bus.execute(c.StartTraining(command_id="t", seed="a/0")).accepted
        refused = bus.execute_all(
            [
                c.StartGrafting(command_id="g1", seed="a/0", improvement=bad),
                c.CancelSeed(command_id="c1", seed="a/0"),  # same batch: must still commit
            ]
        )
        assert refused[0].refused is not None and refused[1].accepted
        assert bus.seed("a/0").stage is Stage.CANCELLED
        for cmd in (
            c.StartFineTuning(command_id="f", seed="a/0", contribution=bad),
            c.FossilizeSeed(command_id="z", seed="a/0", contribution=bad),
            c.FossilizeSeed(command_id="y", seed="a/0", contribution=0.5, instability=bad),
        ):
            source = Stage.EVALUATING if cmd.TRIGGER == "fine_tune" else Stage.FINE_TUNING
            seed = attrs.evolve(bus.seed("a/0"), stage=source)
            with pytest.raises(IllegalTransition, match=cmd.TRIGGER):
                lifecycle.fire(seed, cmd.TRIGGER, cmd, PERMISSIVE)
