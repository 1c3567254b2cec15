"""The lifecycle driver on crafted telemetry: each stage's rule, and a whole life on the bus."""

from __future__ import annotations

import random
from pathlib import Path

import attrs

from esper_es.command_bus import CommandBus
from esper_es.core import commands as c
from esper_es.core.blending import BlendSchedule
from esper_es.core.config import LifecycleConfig
from esper_es.core.ids import IdSource
from esper_es.core.lifecycle import Stage
from esper_es.core.state import SeedState
from esper_es.store.database import RunDatabase
from esper_es.trainer.driver import DriverSettings, LifecycleDriver, relative_spread

LIFE = LifecycleConfig(
    min_training_steps=5,
    min_stabilization_steps=3,
    embargo_steps=4,
    contribution_threshold=0.01,
    max_instability=1.0,
)
SETTINGS = DriverSettings(
    lifecycle=LIFE,
    schedule=BlendSchedule("linear", 4),
    training_patience=10,
    evaluation_steps=2,
    fine_tune_steps=3,
)


@attrs.define
class Crafted:
    """A probe that reports whatever the test sets."""

    gain: float = 0.0
    contrib: float = 0.0
    spread: float = 0.0

    def improvement(self, seed: str) -> float:
        return self.gain

    def contribution(self, seed: str) -> float:
        return self.contrib

    def instability(self, seed: str) -> float:
        return self.spread


def driver() -> LifecycleDriver:
    return LifecycleDriver(SETTINGS, IdSource(random.Random(1)))


def seed(stage: Stage, entered: int = 0, **kw: object) -> SeedState:
    return SeedState("l/0", stage, entered_step=entered, last_step=entered, **kw)  # type: ignore[arg-type]


def only(cmds: list[c.SeedCommand]) -> c.SeedCommand:
    assert len(cmds) == 1, cmds
    return cmds[0]


def test_training_waits_grafts_on_improvement_and_culls_after_patience() -> None:
    d, p = driver(), Crafted(gain=0.2)
    s = seed(Stage.TRAINING, entered=10)
    assert d.commands(14, [s], p) == []
    cmd = only(d.commands(15, [s], p))
    assert isinstance(cmd, c.StartGrafting) and cmd.improvement == 0.2 and cmd.step == 15
    p.gain = 0.0
    assert d.commands(24, [s], p) == []
    cull = only(d.commands(25, [s], p))
    assert isinstance(cull, c.CullSeed) and "0 after 15 steps" in cull.reason


def test_a_diverged_seed_is_culled_as_soon_as_it_may_leave_training() -> None:
    diverging = LifecycleDriver(
        attrs.evolve(SETTINGS, diverged_ratio=2.0), IdSource(random.Random(1))
    )
    s = seed(Stage.TRAINING, entered=10)
    # Own loss 1.5x the loss without it: a seed that may still learn waits out its patience.
    p = Crafted(gain=-0.5)
    assert diverging.commands(15, [s], p) == [] and diverging.commands(24, [s], p) == []
    assert isinstance(only(diverging.commands(25, [s], p)), c.CullSeed)
    # 2.5x: culled at the first boundary that may end TRAINING, not before it.
    p.gain = -1.5
    assert diverging.commands(14, [s], p) == []
    cull = only(diverging.commands(15, [s], p))
    assert isinstance(cull, c.CullSeed) and "diverged: its own loss is 2.5x" in cull.reason
    # Off (0), as in runs recorded before the rule: patience as for any other seed.
    assert driver().commands(15, [s], p) == []


def test_grafting_follows_the_blend_schedule_then_stabilizes() -> None:
    d, p = driver(), Crafted()
    s = seed(Stage.GRAFTING, entered=10, alpha=0.0, blend_target=0.8, blueprint="b", kernel_id="k")
    adj = only(d.commands(11, [s], p))
    assert isinstance(adj, c.AdjustBlend) and abs(adj.alpha - 0.2) < 1e-12
    already = attrs.evolve(s, alpha=0.4)
    assert d.commands(12, [already], p) == []  # alpha already where the schedule says
    last = d.commands(14, [attrs.evolve(s, alpha=0.6)], p)
    assert [type(x) for x in last] == [c.AdjustBlend, c.Stabilize]
    assert isinstance(last[0], c.AdjustBlend) and last[0].alpha == 0.8


def test_evaluation_and_fine_tuning_gate_on_contribution_and_instability() -> None:
    d, p = driver(), Crafted(contrib=0.05)
    assert only(d.commands(3, [seed(Stage.STABILIZATION)], p)).TRIGGER == "evaluate"
    assert d.commands(2, [seed(Stage.STABILIZATION)], p) == []
    assert d.commands(1, [seed(Stage.EVALUATING)], p) == []
    ft = only(d.commands(2, [seed(Stage.EVALUATING)], p))
    assert isinstance(ft, c.StartFineTuning) and ft.contribution == 0.05
    assert d.contributions["l/0"] == 0.05
    p.spread = 0.3
    fossil = only(d.commands(3, [seed(Stage.FINE_TUNING)], p))
    assert isinstance(fossil, c.FossilizeSeed) and fossil.instability == 0.3
    p.spread = 2.0
    unstable = only(d.commands(3, [seed(Stage.FINE_TUNING)], p))
    assert isinstance(unstable, c.CullSeed) and "instability" in unstable.reason
    p.contrib = 0.0
    weak = only(d.commands(2, [seed(Stage.EVALUATING)], p))
    assert isinstance(weak, c.CullSeed) and "below the threshold" in weak.reason


def test_ended_seeds_are_embargoed_then_released() -> None:
    d, p = driver(), Crafted()
    for stage in (Stage.CULLED, Stage.CANCELLED, Stage.ROLLED_BACK):
        assert only(d.commands(5, [seed(stage)], p)).TRIGGER == "embargo"
    held = seed(Stage.EMBARGOED, entered=5, embargo_until=9)
    assert d.commands(8, [held], p) == []
    assert only(d.commands(9, [held], p)).TRIGGER == "release"
    assert d.commands(9, [seed(Stage.DORMANT), seed(Stage.FOSSILIZED)], p) == []
    assert only(d.commands(0, [seed(Stage.GERMINATED)], p)).TRIGGER == "start_training"


def test_same_telemetry_gives_the_same_commands() -> None:
    seeds = [
        SeedState("a/1", Stage.TRAINING, entered_step=0),
        SeedState("a/0", Stage.GERMINATED),
        SeedState("b/0", Stage.CULLED),
    ]
    one = driver().commands(7, seeds, Crafted(gain=0.1))
    two = driver().commands(7, list(reversed(seeds)), Crafted(gain=0.1))
    assert one == two
    assert [x.seed for x in one] == ["a/0", "a/1", "b/0"]


def test_a_whole_life_through_the_real_command_bus(tmp_path: Path) -> None:
    ids = IdSource(random.Random(2))
    with RunDatabase.create(tmp_path / "life.db", "run-life") as db:
        bus = CommandBus(db, LIFE)
        bus.execute_all([
            c.StartRun(command_id=ids(), run_id="run-life", master_seed=0),
            c.RegisterSeedLayer(command_id=ids(), layer="l", shape_kind="image", channels=4,
                                num_seeds=1, blueprints=("conv3x3",)),
            c.GerminateSeed(command_id=ids(), seed="l/0", blueprint="conv3x3", kernel_id="k-1",
                            init_seed=1),
        ])  # fmt: skip
        d, p = driver(), Crafted(gain=0.1, contrib=0.02, spread=0.1)
        seen = []
        for step in range(1, 40):
            outcomes = bus.execute_all(d.commands(step, [bus.seed("l/0")], p))
            assert all(o.accepted for o in outcomes), [o.refused for o in outcomes]
            seen += [type(o.command).__name__ for o in outcomes]
        assert bus.seed("l/0").stage is Stage.FOSSILIZED
        assert bus.seed("l/0").alpha == 1.0
        assert seen[0] == "StartTraining" and seen[-1] == "FossilizeSeed"
        assert seen.count("AdjustBlend") == 4


def test_relative_spread() -> None:
    assert relative_spread([]) == 0.0 and relative_spread([1.0]) == 0.0
    assert relative_spread([1.0, 1.0, 1.0]) == 0.0
    assert abs(relative_spread([1.0, 3.0]) - (2**0.5 / 2)) < 1e-12


def test_a_measured_contribution_is_forgotten_with_its_kernel() -> None:
    """Once a measured seed is culled, its slot reports no contribution for the next kernel."""
    d, p = driver(), Crafted(contrib=0.05)
    d.commands(2, [seed(Stage.EVALUATING)], p)
    assert d.contributions == {"l/0": 0.05}
    d.commands(3, [seed(Stage.FINE_TUNING, entered=2)], p)
    assert d.contributions == {"l/0": 0.05}
    d.commands(9, [seed(Stage.CULLED, entered=8)], p)
    assert d.contributions == {}
