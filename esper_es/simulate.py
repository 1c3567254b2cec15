"""`esper-es simulate`: a synthetic controller driving the real command path, without torch.

Each step it picks commands the way a controller would (mostly the natural next step of a
seed's lifecycle, with telemetry drawn so that gates sometimes refuse, plus a small share of
random and usually illegal commands) and commits them through the `CommandBus` as one
transaction: the same command -> decide -> append path as training. Everything is drawn
from one seeded `random.Random`, so a seed gives the same log.
"""

from __future__ import annotations

import random
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import attrs

from esper_es.command_bus import CommandBus
from esper_es.config import RunConfig
from esper_es.core import commands as c
from esper_es.core.ids import IdSource, kernel_id, new_id
from esper_es.core.lifecycle import Stage
from esper_es.core.state import LayerState, SeedState
from esper_es.store.backends import create_store

#: Blueprint names of the kernel library by activation shape (names only: no torch here).
BLUEPRINTS: dict[str, tuple[str, ...]] = {
    "image": ("conv3x3", "depthwise", "se_attention", "norm"),
    "sequence": ("attention", "mlp", "lora", "norm"),
    "vector": ("mlp", "lora", "norm"),
}
SHAPES = tuple(BLUEPRINTS)


@attrs.frozen
class SimulationReport:
    """What a simulation wrote."""

    run_id: str
    path: str
    steps: int
    events: int
    commands: int
    refused: int
    stages: dict[str, int]
    interrupted: bool = False


class SyntheticController:
    """Chooses each step's commands from the live seed states."""

    def __init__(self, bus: CommandBus, config: RunConfig, rng: random.Random) -> None:
        self.bus = bus
        self.cfg = config.simulate
        self.life = config.lifecycle
        self.rng = rng
        self._ids = IdSource(rng)

    def _id(self) -> str:
        return self._ids()

    def commands_for_step(self, step: int) -> list[c.Command]:
        """This step's commands, in a deterministic order."""
        out: list[c.Command] = []
        seeds = sorted(
            (sid, layer) for layer in self.bus.layers.values() for sid in layer.seed_ids()
        )
        fossil_share = sum(
            1 for sid, _ in seeds if self.bus.seed(sid).stage is Stage.FOSSILIZED
        ) / max(1, len(seeds))
        for sid, layer in seeds:
            if self.rng.random() >= self.cfg.act_probability:
                continue
            seed = self.bus.seed(sid)
            if self.rng.random() < self.cfg.illegal_probability:
                out.append(self._random_command(seed, layer, step))
                continue
            cmd = self._next_command(seed, layer, step, fossil_share)
            if cmd is not None:
                out.append(cmd)
        return out

    def _next_command(
        self, s: SeedState, layer: LayerState, step: int, fossil_share: float
    ) -> c.Command | None:
        r, rng = self.rng.random(), self.rng
        base: dict[str, Any] = {"seed": s.seed, "step": step}
        in_stage = step - s.entered_step
        stage = s.stage
        if stage is Stage.DORMANT:
            return self._germinate(s, layer, step, unknown=r < 0.03)
        if stage is Stage.GERMINATED:
            if r < 0.05:
                return c.CancelSeed(command_id=self._id(), reason="synthetic: budget", **base)
            return c.StartTraining(command_id=self._id(), **base)
        if stage is Stage.TRAINING:
            if r < 0.02:
                return c.CullSeed(command_id=self._id(), reason="synthetic: diverged", **base)
            if in_stage >= self.life.min_training_steps or r < 0.05:
                return c.StartGrafting(
                    command_id=self._id(), improvement=rng.gauss(0.05, 0.05), **base
                )
            return None
        if stage is Stage.GRAFTING:
            if r < 0.02:
                return c.RollBackSeed(command_id=self._id(), reason="synthetic: loss spike", **base)
            if s.alpha + 1e-12 >= s.blend_target:
                return c.Stabilize(command_id=self._id(), **base)
            alpha = min(s.blend_target, s.alpha + s.blend_target / self.cfg.ramp_steps)
            return c.AdjustBlend(command_id=self._id(), alpha=alpha, **base)
        if stage is Stage.STABILIZATION:
            if r < 0.02:
                return c.RollBackSeed(command_id=self._id(), reason="synthetic: unstable", **base)
            if in_stage >= self.life.min_stabilization_steps or r < 0.05:
                return c.StartEvaluation(command_id=self._id(), **base)
            return None
        if stage is Stage.EVALUATING:
            contribution = rng.gauss(0.02, 0.03)
            if contribution < self.life.contribution_threshold and r < 0.5:
                return c.CullSeed(
                    command_id=self._id(), reason="synthetic: no contribution", **base
                )
            return c.StartFineTuning(command_id=self._id(), contribution=contribution, **base)
        if stage is Stage.FINE_TUNING:
            if fossil_share >= self.cfg.max_fossilized_fraction or r < 0.3:
                return c.CullSeed(command_id=self._id(), reason="synthetic: slot needed", **base)
            return c.FossilizeSeed(
                command_id=self._id(),
                contribution=rng.gauss(0.02, 0.03),
                instability=rng.uniform(0.0, 1.5 * self.life.max_instability),
                **base,
            )
        if stage in (Stage.CULLED, Stage.CANCELLED, Stage.ROLLED_BACK):
            return c.EmbargoSeed(command_id=self._id(), **base)
        if stage is Stage.EMBARGOED:
            until = s.embargo_until or 0
            if step >= until or r < 0.05:
                return c.ReleaseSeed(command_id=self._id(), **base)
            return None
        # FOSSILIZED is terminal: now and then a controller still tries, and is refused (L2).
        if r < 0.01:
            return c.CullSeed(command_id=self._id(), reason="synthetic: late cull", **base)
        return None

    def _germinate(self, s: SeedState, layer: LayerState, step: int, unknown: bool) -> c.Command:
        fitting = sorted(layer.blueprints)
        blueprint = "no_such_blueprint" if unknown else self.rng.choice(fitting)
        init_seed = self.rng.getrandbits(63)
        shapes = f"{layer.shape_kind}:{layer.channels}"
        return c.GerminateSeed(
            command_id=self._id(),
            seed=s.seed,
            step=step,
            blueprint=blueprint,
            kernel_id=kernel_id(blueprint, 1, "{}", shapes, init_seed),
            init_seed=init_seed,
            blend_target=self.rng.choice((None, 0.5, 0.75, 1.0)),
        )

    def _random_command(self, s: SeedState, layer: LayerState, step: int) -> c.Command:
        kind = self.rng.choice(sorted(c.COMMAND_FOR_TRIGGER))
        cls = c.COMMAND_FOR_TRIGGER[kind]
        base: dict[str, Any] = {"command_id": self._id(), "seed": s.seed, "step": step}
        extras: dict[str, dict[str, Any]] = {
            "germinate": {
                "blueprint": self.rng.choice(sorted(layer.blueprints)),
                "kernel_id": "k-synthetic",
                "init_seed": 0,
            },
            "start_grafting": {"improvement": self.rng.uniform(-0.1, 0.2)},
            "fine_tune": {"contribution": self.rng.uniform(-0.05, 0.05)},
            "fossilize": {"contribution": self.rng.uniform(-0.05, 0.05)},
            "adjust_blend": {"alpha": self.rng.uniform(-0.2, 1.2)},
            "set_blend_target": {"target": self.rng.uniform(-0.2, 1.2)},
        }
        return cls(**base, **extras.get(kind, {}))


@contextmanager
def _ctrl_c_flag() -> Iterator[Callable[[], bool]]:
    """While open (in the main thread): Ctrl-C sets a flag the loop reads after each step.

    A KeyboardInterrupt can be lost: `transitions` catches every exception raised while it
    finishes a trigger (its `finalize_event` step catches BaseException and logs it), and the
    lifecycle fires a trigger for nearly every command, so an interrupt landing there was
    swallowed and the simulation ran on to its last event (measured: about 1 Ctrl-C in 25
    under load). The flag cannot be swallowed, and the step in flight completes.
    """
    asked = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield asked.is_set
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        asked.set()

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield asked.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def simulate(
    path: str | Path,
    *,
    seeds: int = 64,
    events: int = 10_000,
    seed: int = 0,
    config: RunConfig | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> SimulationReport:
    """Write a new run database of at least `events` events from a synthetic controller."""
    cfg = config or RunConfig()
    rng = random.Random(seed)
    run_id = f"sim-{new_id(rng)[:8]}"
    db = create_store(path, run_id)
    try:
        bus = CommandBus(db, cfg.lifecycle)
        setup: list[c.Command] = [
            c.StartRun(
                command_id=new_id(rng),
                run_id=run_id,
                master_seed=seed,
                config=cfg.to_dict(),
                environment={"kind": "simulation"},
            )
        ]
        per = cfg.simulate.seeds_per_layer
        for i in range(0, seeds, per):
            shape = SHAPES[(i // per) % len(SHAPES)]
            setup.append(
                c.RegisterSeedLayer(
                    command_id=new_id(rng),
                    layer=f"sim{i // per}",
                    shape_kind=shape,
                    channels=16,
                    num_seeds=min(per, seeds - i),
                    blueprints=BLUEPRINTS[shape],
                )
            )
        bus.execute_all(setup)
        controller = SyntheticController(bus, cfg, rng)
        step = n_commands = n_refused = 0
        interrupted = False
        head = db.head()[0]
        with _ctrl_c_flag() as asked:
            while head < events and not asked():
                step += 1
                try:
                    outcomes = bus.execute_all(controller.commands_for_step(step))
                    n_commands += len(outcomes)
                    n_refused += sum(1 for o in outcomes if not o.accepted)
                    head = db.head()[0]
                    if on_step is not None:
                        on_step(step, head)
                except KeyboardInterrupt:
                    # Off the main thread no flag is set: Ctrl-C may land anywhere in the
                    # step; its transaction either committed whole or not at all.
                    interrupted = True
                    head = db.head()[0]
                    break
            interrupted = interrupted or asked()
        stages: dict[str, int] = {}
        for layer in bus.layers.values():
            for sid in layer.seed_ids():
                name = bus.seed(sid).stage.value
                stages[name] = stages.get(name, 0) + 1
        return SimulationReport(
            run_id, db.location, step, head, n_commands, n_refused, stages, interrupted
        )
    finally:
        db.close()
