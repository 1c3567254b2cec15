"""The decider: `decide(state, command, context) -> events` and `evolve(state, event) -> state`.

Both are pure. `decide` consults the lifecycle machine (gates included) and raises a typed
error for anything it refuses, producing no events. `evolve` applies facts: it checks only
that an event can follow the state (so a corrupt log is caught), and is the hot path of
folding (B5), hence the per-type functions and direct constructor calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, overload

import attrs

from esper_es.core import commands as c
from esper_es.core import events as ev
from esper_es.core.config import LifecycleConfig
from esper_es.core.ids import seed_stream
from esper_es.core.lifecycle import (
    BLENDING_STAGES,
    KERNEL_STAGES,
    TABLE,
    Stage,
    fire,
)
from esper_es.core.state import LayerState, RunState, SeedState
from esper_es.errors import IllegalTransition, InconsistentHistory

SHAPE_KINDS = ("image", "sequence", "vector")


@attrs.frozen(slots=True)
class Context:
    """What a decision may read besides the state: the gate thresholds and the seed's layer."""

    config: LifecycleConfig = attrs.field(factory=LifecycleConfig)
    layer: LayerState | None = None


def layer_of(seed: str) -> str:
    """The layer name of seed id `<layer>/<index>`."""
    return seed.rsplit("/", 1)[0]


# --- decide ---------------------------------------------------------------------------


def decide(state: Any, command: c.Command, context: Context | None = None) -> tuple[ev.Event, ...]:
    """The events `command` produces from `state`; raises a typed error when refused."""
    ctx = context if context is not None else Context()
    if isinstance(command, c.SeedCommand):
        return _decide_seed(state, command, ctx)
    if isinstance(command, c.RegisterSeedLayer):
        return _decide_layer(state, command)
    if isinstance(command, c.StartRun):
        return _decide_run(state, command)
    if isinstance(command, c.RecordFact):
        return _decide_fact(state, command)
    raise TypeError(f"no decider for command {type(command).__name__}")


def _decide_seed(s: SeedState, cmd: c.SeedCommand, ctx: Context) -> tuple[ev.Event, ...]:
    trigger = cmd.TRIGGER
    if cmd.seed != s.seed:
        raise IllegalTransition(
            cmd.seed, s.stage.value, trigger, f"state given is of seed {s.seed}"
        )
    if cmd.step < s.last_step:
        raise IllegalTransition(
            s.seed,
            s.stage.value,
            trigger,
            f"step {cmd.step} precedes the seed's last event at step {s.last_step}",
        )
    fire(s, trigger, cmd, ctx.config, ctx.layer)
    step = cmd.step
    if isinstance(cmd, c.GerminateSeed):
        target = ctx.config.default_blend_target if cmd.blend_target is None else cmd.blend_target
        if not (math.isfinite(target) and 0.0 <= target <= 1.0):
            raise IllegalTransition(
                s.seed, s.stage.value, trigger, f"blend target {target!r} is outside [0, 1]"
            )
        if not isinstance(cmd.config, Mapping) or not all(isinstance(k, str) for k in cmd.config):
            raise IllegalTransition(
                s.seed, s.stage.value, trigger, f"kernel config {cmd.config!r} is not a table"
            )
        return (
            ev.SeedGerminated(
                seed=s.seed,
                step=step,
                layer=layer_of(s.seed),
                blueprint=cmd.blueprint,
                kernel_id=cmd.kernel_id,
                init_seed=cmd.init_seed,
                blend_target=float(target),
                config=dict(cmd.config),
            ),
        )
    if isinstance(cmd, c.StartGrafting):
        return (ev.SeedGraftingStarted(seed=s.seed, step=step, improvement=float(cmd.improvement)),)
    if isinstance(cmd, c.Stabilize):
        return (ev.SeedStabilized(seed=s.seed, step=step, alpha=s.alpha),)
    if isinstance(cmd, c.StartFineTuning):
        return (
            ev.SeedFineTuningStarted(seed=s.seed, step=step, contribution=float(cmd.contribution)),
        )
    if isinstance(cmd, c.FossilizeSeed):
        return (
            ev.SeedFossilized(
                seed=s.seed,
                step=step,
                contribution=float(cmd.contribution),
                instability=float(cmd.instability),
            ),
        )
    if isinstance(cmd, c.CancelSeed | c.CullSeed | c.RollBackSeed):
        return (ev.TRIGGER_EVENTS[trigger](seed=s.seed, step=step, reason=cmd.reason),)  # type: ignore[call-arg]
    if isinstance(cmd, c.EmbargoSeed):
        return (
            ev.SeedEmbargoed(
                seed=s.seed,
                step=step,
                until_step=step + (ctx.config.embargo_steps if cmd.steps is None else cmd.steps),
            ),
        )
    if isinstance(cmd, c.AdjustBlend):
        return (ev.BlendAdjusted(seed=s.seed, step=step, alpha=float(cmd.alpha)),)
    if isinstance(cmd, c.SetBlendTarget):
        return (ev.BlendTargetSet(seed=s.seed, step=step, target=float(cmd.target)),)
    # start_training, evaluate, release: the event says only that it happened.
    return (ev.TRIGGER_EVENTS[trigger](seed=s.seed, step=step),)  # type: ignore[call-arg]


def _decide_layer(s: LayerState | None, cmd: c.RegisterSeedLayer) -> tuple[ev.Event, ...]:
    def refuse(reason: str) -> IllegalTransition:
        return IllegalTransition(
            cmd.layer, "REGISTERED" if s and s.version else "ABSENT", "register_layer", reason
        )

    if s is not None and s.version > 0:
        raise refuse("seed layer is already registered")
    if not cmd.layer or "/" in cmd.layer or ":" in cmd.layer:
        raise refuse("a layer name is non-empty and contains neither '/' nor ':'")
    if cmd.shape_kind not in SHAPE_KINDS:
        raise refuse(f"shape kind {cmd.shape_kind!r} is not one of {', '.join(SHAPE_KINDS)}")
    if cmd.channels < 1 or cmd.num_seeds < 1:
        raise refuse("channels and num_seeds must be at least 1")
    return (
        ev.SeedLayerRegistered(
            layer=cmd.layer,
            shape_kind=cmd.shape_kind,
            channels=cmd.channels,
            num_seeds=cmd.num_seeds,
            blueprints=sorted(set(cmd.blueprints)),
            step=cmd.step,
        ),
    )


def _decide_run(s: RunState | None, cmd: c.StartRun) -> tuple[ev.Event, ...]:
    if s is not None and s.version > 0:
        raise IllegalTransition(
            "run", "STARTED", "start_run", f"run {s.run_id} has already started"
        )
    return (
        ev.RunStarted(
            run_id=cmd.run_id,
            master_seed=cmd.master_seed,
            config=dict(cmd.config),
            dataset_fingerprint=cmd.dataset_fingerprint,
            environment=dict(cmd.environment),
            step=cmd.step,
            host=None if cmd.host is None else dict(cmd.host),
            initial_weights=None if cmd.initial_weights is None else dict(cmd.initial_weights),
            world_size=cmd.world_size,
            backend=cmd.backend,
        ),
    )


def _decide_fact(state: Any, cmd: c.RecordFact) -> tuple[ev.Event, ...]:
    e = cmd.event
    if isinstance(e, ev.RunStarted) or not isinstance(e, ev.RunEvent | ev.ControllerEvent):
        raise TypeError(
            f"only run and controller facts are recorded directly, not {type(e).__name__}; "
            "seed and layer changes go through their commands"
        )
    if isinstance(e, ev.RunEvent) and (state is None or state.version == 0):
        raise IllegalTransition("run", "ABSENT", "record", f"{e.TYPE} before RunStarted")
    return (e,)


# --- evolve ---------------------------------------------------------------------------

_MISSING = object()


def _transition(s: SeedState, e: ev.SeedEvent, trigger: str) -> Stage:
    dest = TABLE.get((s.stage, trigger), _MISSING)
    if dest is _MISSING:
        raise InconsistentHistory(
            seed_stream(s.seed), s.version + 1, f"{type(e).__name__} cannot follow {s.stage.value}"
        )
    return s.stage if dest is None else dest  # type: ignore[return-value]


def _moved(s: SeedState, e: ev.SeedEvent, dest: Stage) -> SeedState:
    """The seed after a lifecycle transition into `dest` (kernel and alpha per L3/L4)."""
    keeps_kernel = dest in KERNEL_STAGES
    return SeedState(
        s.seed,
        dest,
        s.blueprint if keeps_kernel else None,
        s.kernel_id if keeps_kernel else None,
        s.init_seed if keeps_kernel else None,
        s.alpha if dest in BLENDING_STAGES else 0.0,
        s.blend_target if keeps_kernel else 0.0,
        e.step,
        e.step,
        s.embargo_until,
        s.version + 1,
    )


def _germinated(s: SeedState, e: ev.SeedGerminated) -> SeedState:
    dest = _transition(s, e, "germinate")
    return SeedState(
        s.seed, dest, e.blueprint, e.kernel_id, e.init_seed, 0.0, e.blend_target,
        e.step, e.step, None, s.version + 1,
    )  # fmt: skip


def _embargoed(s: SeedState, e: ev.SeedEmbargoed) -> SeedState:
    moved = _moved(s, e, _transition(s, e, "embargo"))
    return attrs.evolve(moved, embargo_until=e.until_step)


def _released(s: SeedState, e: ev.SeedReleased) -> SeedState:
    _transition(s, e, "release")
    return SeedState(
        s.seed, Stage.DORMANT, last_step=e.step, entered_step=e.step, version=s.version + 1
    )


def _blend_adjusted(s: SeedState, e: ev.BlendAdjusted) -> SeedState:
    _transition(s, e, "adjust_blend")
    return SeedState(
        s.seed, s.stage, s.blueprint, s.kernel_id, s.init_seed, e.alpha, s.blend_target,
        s.entered_step, e.step, s.embargo_until, s.version + 1,
    )  # fmt: skip


def _blend_target_set(s: SeedState, e: ev.BlendTargetSet) -> SeedState:
    _transition(s, e, "set_blend_target")
    return SeedState(
        s.seed, s.stage, s.blueprint, s.kernel_id, s.init_seed, s.alpha, e.target,
        s.entered_step, e.step, s.embargo_until, s.version + 1,
    )  # fmt: skip


def _plain(trigger: str) -> Callable[[SeedState, Any], SeedState]:
    def apply(s: SeedState, e: ev.SeedEvent) -> SeedState:
        return _moved(s, e, _transition(s, e, trigger))

    return apply


_SEED_EVOLVERS: dict[type[ev.Event], Callable[[SeedState, Any], SeedState]] = {
    cls: _plain(trigger) for cls, trigger in ev.EVENT_TRIGGERS.items()
}
_SEED_EVOLVERS.update(
    {
        ev.SeedGerminated: _germinated,
        ev.SeedEmbargoed: _embargoed,
        ev.SeedReleased: _released,
        ev.BlendAdjusted: _blend_adjusted,
        ev.BlendTargetSet: _blend_target_set,
    }
)


def _evolve_layer(s: LayerState | None, e: ev.SeedLayerRegistered) -> LayerState:
    if s is not None and s.version > 0:
        raise InconsistentHistory(e.stream(), s.version + 1, "seed layer registered twice")
    return LayerState(e.layer, e.shape_kind, e.channels, e.num_seeds, frozenset(e.blueprints), 1)


def _evolve_run(s: RunState | None, e: ev.RunEvent) -> RunState:
    version = (s.version if s is not None else 0) + 1
    if isinstance(e, ev.RunStarted):
        if s is not None and s.version > 0:
            raise InconsistentHistory(e.stream(), version, "run started twice")
        return RunState(e.run_id, e.master_seed, version)
    if s is None:
        raise InconsistentHistory(e.stream(), version, f"{type(e).__name__} before RunStarted")
    return RunState(s.run_id, s.master_seed, version)


St = TypeVar("St")


@overload
def evolve(state: SeedState, event: ev.Event) -> SeedState: ...
@overload
def evolve(state: LayerState | None, event: ev.SeedLayerRegistered) -> LayerState: ...
@overload
def evolve(state: RunState | None, event: ev.RunEvent) -> RunState: ...
@overload
def evolve(state: int | None, event: ev.ControllerEvent) -> int: ...
def evolve(state: Any, event: ev.Event) -> Any:
    """The state after `event`; raises InconsistentHistory if the event cannot follow it."""
    seed_step = _SEED_EVOLVERS.get(type(event))
    if seed_step is not None:
        return seed_step(state, event)
    if isinstance(event, ev.SeedLayerRegistered):
        return _evolve_layer(state, event)
    if isinstance(event, ev.RunEvent):
        return _evolve_run(state, event)
    if isinstance(event, ev.ControllerEvent):
        # The controller stream's state is its version: what it records has no lifecycle.
        return (state or 0) + 1
    raise TypeError(f"no evolver for event {type(event).__name__}")


def fold(state: St, events: Iterable[ev.Event]) -> St:
    """Apply `events` to `state` in order."""
    for event in events:
        state = evolve(state, event)  # type: ignore[call-overload]
    return state
