"""The seed lifecycle (SPEC §2), defined once as a `transitions` machine.

Scaling: a `transitions.Machine` per seed (with this 12-state table) costs ~0.15 ms, and
`add_model` on one machine grows faster than linearly (4 times the models took 5.3 times as
long), so 10 000 seeds take well over a second either way (B7, bench/b7_seeds.py). Instead
one module-level machine is the single definition, and it runs on a throw-away *cursor* (a
flyweight carrying the seed's stage, the command and the thresholds) that is never
registered with it. Firing a trigger this way costs ~6 µs; a seed is just an immutable
`SeedState` value. `fire` runs the machine's own transition and its conditions without
`transitions`' event machinery where that machinery would do nothing more (`_plain`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

import attrs
from transitions import Machine, MachineError

from esper_es.core.config import LifecycleConfig
from esper_es.errors import IllegalTransition

if TYPE_CHECKING:
    from esper_es.core.state import LayerState, SeedState


class Stage(StrEnum):
    """The 12 lifecycle states of a seed."""

    DORMANT = "DORMANT"
    GERMINATED = "GERMINATED"
    TRAINING = "TRAINING"
    GRAFTING = "GRAFTING"
    STABILIZATION = "STABILIZATION"
    EVALUATING = "EVALUATING"
    FINE_TUNING = "FINE_TUNING"
    FOSSILIZED = "FOSSILIZED"
    CULLED = "CULLED"
    CANCELLED = "CANCELLED"
    ROLLED_BACK = "ROLLED_BACK"
    EMBARGOED = "EMBARGOED"


S = Stage

#: Stages in which a seed holds a kernel (L4).
KERNEL_STAGES: Final = frozenset(
    {
        S.GERMINATED,
        S.TRAINING,
        S.GRAFTING,
        S.STABILIZATION,
        S.EVALUATING,
        S.FINE_TUNING,
        S.FOSSILIZED,
    }
)
#: Stages in which alpha may be non-zero (L3).
BLENDING_STAGES: Final = frozenset(
    {S.GRAFTING, S.STABILIZATION, S.EVALUATING, S.FINE_TUNING, S.FOSSILIZED}
)
#: Stages in which alpha may still move (FOSSILIZED freezes it).
ADJUSTABLE_STAGES: Final = BLENDING_STAGES - {S.FOSSILIZED}
TERMINAL_STAGES: Final = frozenset({S.FOSSILIZED})


class GateInput:
    """The flyweight model the shared machine runs on: one seed, one command, the thresholds."""

    __slots__ = ("command", "config", "layer", "refusal", "seed", "state")

    def __init__(
        self, seed: SeedState, command: Any, config: LifecycleConfig, layer: LayerState | None
    ) -> None:
        self.state: Stage = seed.stage
        self.seed = seed
        self.command = command
        self.config = config
        self.layer = layer
        self.refusal: str | None = None


Gate = Callable[[GateInput], "str | None"]


def _steps_in_stage(g: GateInput) -> int:
    return int(g.command.step) - g.seed.entered_step


def gate_blueprint_fits(g: GateInput) -> str | None:
    """The blueprint exists and fits the layer's shape."""
    if g.layer is None:
        return f"layer of seed {g.seed.seed!r} is not registered"
    index = g.seed.seed.rsplit("/", 1)[-1]
    if not (index.isdigit() and int(index) < g.layer.num_seeds):
        return f"layer {g.layer.name!r} has seeds 0..{g.layer.num_seeds - 1}, not {index!r}"
    if g.command.blueprint not in g.layer.blueprints:
        known = ", ".join(sorted(g.layer.blueprints)) or "(none)"
        return (
            f"blueprint {g.command.blueprint!r} does not fit layer {g.layer.name!r}; fits: {known}"
        )
    return None


def gate_training_done(g: GateInput) -> str | None:
    """At least min steps in TRAINING and the seed's own training signal improved."""
    steps, need = _steps_in_stage(g), g.config.min_training_steps
    if steps < need:
        return f"{steps} steps in TRAINING, gate needs {need}"
    improvement = float(g.command.improvement)
    # A non-finite signal would pass `>` (inf) yet could not be recorded: canonical JSON
    # refuses it, which would abort the whole step boundary's commit.
    if not (math.isfinite(improvement) and improvement > g.config.min_improvement):
        least = g.config.min_improvement
        return f"training signal improved by {improvement:.6g}, gate needs > {least:.6g}"
    return None


def gate_alpha_reached(g: GateInput) -> str | None:
    """Alpha has reached its blend target."""
    if g.seed.alpha + 1e-12 < g.seed.blend_target:
        return f"alpha {g.seed.alpha:.6g} has not reached its target {g.seed.blend_target:.6g}"
    return None


def gate_stabilized(g: GateInput) -> str | None:
    """At least min steps in STABILIZATION."""
    steps, need = _steps_in_stage(g), g.config.min_stabilization_steps
    if steps < need:
        return f"{steps} steps in STABILIZATION, gate needs {need}"
    return None


def gate_contributes(g: GateInput) -> str | None:
    """Measured counterfactual contribution at or above the threshold."""
    c, need = float(g.command.contribution), g.config.contribution_threshold
    if not (math.isfinite(c) and c >= need):
        return f"contribution {c:.6g} is below the threshold {need:.6g}"
    return None


def gate_fossilizable(g: GateInput) -> str | None:
    """Contribution still at or above the threshold, and no instability."""
    refusal = gate_contributes(g)
    if refusal is not None:
        return refusal
    inst, most = float(g.command.instability), g.config.max_instability
    if not (math.isfinite(inst) and inst <= most):
        return f"instability {inst:.6g} exceeds {most:.6g}"
    return None


def gate_embargo_elapsed(g: GateInput) -> str | None:
    """The embargo has run its course."""
    until = g.seed.embargo_until
    if until is not None and g.command.step < until:
        return f"embargoed until step {until}, now step {g.command.step}"
    return None


def _unit_interval(name: str) -> Gate:
    def gate(g: GateInput) -> str | None:
        x = float(getattr(g.command, name))
        if not (math.isfinite(x) and 0.0 <= x <= 1.0):
            return f"{name} {x!r} is outside [0, 1]"
        return None

    gate.__name__ = f"gate_{name}_in_unit_interval"
    gate.__doc__ = f"The command's {name} lies in [0, 1]."
    return gate


@attrs.frozen
class TransitionSpec:
    """One row of the lifecycle table; `dest` None marks an internal (stage-keeping) trigger."""

    trigger: str
    sources: tuple[Stage, ...]
    dest: Stage | None
    gate: Gate | None = None


#: The lifecycle table of SPEC §2, then the two internal triggers that move blend factors.
TRANSITIONS: Final[tuple[TransitionSpec, ...]] = (
    TransitionSpec("germinate", (S.DORMANT,), S.GERMINATED, gate_blueprint_fits),
    TransitionSpec("start_training", (S.GERMINATED,), S.TRAINING),
    TransitionSpec("cancel", (S.GERMINATED, S.TRAINING), S.CANCELLED),
    TransitionSpec("start_grafting", (S.TRAINING,), S.GRAFTING, gate_training_done),
    TransitionSpec("stabilize", (S.GRAFTING,), S.STABILIZATION, gate_alpha_reached),
    TransitionSpec("evaluate", (S.STABILIZATION,), S.EVALUATING, gate_stabilized),
    TransitionSpec("fine_tune", (S.EVALUATING,), S.FINE_TUNING, gate_contributes),
    TransitionSpec("fossilize", (S.FINE_TUNING,), S.FOSSILIZED, gate_fossilizable),
    TransitionSpec("cull", (S.TRAINING, S.EVALUATING, S.FINE_TUNING), S.CULLED),
    TransitionSpec(
        "roll_back",
        (S.GRAFTING, S.STABILIZATION, S.EVALUATING, S.FINE_TUNING),
        S.ROLLED_BACK,
    ),
    TransitionSpec("embargo", (S.CULLED, S.CANCELLED, S.ROLLED_BACK), S.EMBARGOED),
    TransitionSpec("release", (S.EMBARGOED,), S.DORMANT, gate_embargo_elapsed),
    TransitionSpec("adjust_blend", tuple(sorted(ADJUSTABLE_STAGES)), None, _unit_interval("alpha")),
    TransitionSpec(
        "set_blend_target",
        tuple(sorted(KERNEL_STAGES - TERMINAL_STAGES)),
        None,
        _unit_interval("target"),
    ),
)

LIFECYCLE_TRIGGERS: Final = tuple(t.trigger for t in TRANSITIONS if t.dest is not None)
INTERNAL_TRIGGERS: Final = tuple(t.trigger for t in TRANSITIONS if t.dest is None)


def _condition(gate: Gate) -> Callable[[Any], bool]:
    def check(event_data: Any) -> bool:
        refusal = gate(event_data.model)
        if refusal is None:
            return True
        event_data.model.refusal = refusal
        return False

    check.__name__ = gate.__name__
    check.__doc__ = gate.__doc__
    return check


def _build_machine() -> Machine:
    rows: list[dict[str, Any]] = []
    for spec in TRANSITIONS:
        rows.append(
            {
                "trigger": spec.trigger,
                "source": list(spec.sources),
                "dest": spec.dest,
                "conditions": [_condition(spec.gate)] if spec.gate else [],
            }
        )
    return Machine(
        model=None,
        states=list(Stage),
        transitions=rows,
        initial=Stage.DORMANT,
        auto_transitions=False,
        send_event=True,
        ignore_invalid_triggers=False,
    )


#: The single definition of the lifecycle the code runs, the diagram draws and tests check.
MACHINE: Final[Machine] = _build_machine()


def transition_table() -> Mapping[tuple[Stage, str], Stage | None]:
    """Every (source, trigger) pair the machine accepts, with its destination."""
    table: dict[tuple[Stage, str], Stage | None] = {}
    for trigger, event in MACHINE.events.items():
        for source_name, transitions in event.transitions.items():
            for tr in transitions:
                dest = Stage(tr.dest) if tr.dest is not None else None
                table[(Stage(source_name), trigger)] = dest
    return table


#: (source, trigger) -> dest, read off MACHINE; the fast path of `evolve`.
TABLE: Final = transition_table()
#: trigger -> destination stage (None for internal triggers).
DEST: Final[Mapping[str, Stage | None]] = {t.trigger: t.dest for t in TRANSITIONS}


class _EventData:
    """What a condition of MACHINE reads of transitions' `EventData` (`send_event=True`)."""

    __slots__ = ("model",)

    def __init__(self, model: GateInput) -> None:
        self.model = model


def _plain(machine: Machine, transition: Any) -> bool:
    """Whether firing `transition` does nothing but check its conditions and move.

    Then running its condition functions here does what `Event.trigger` does; otherwise (a
    callback anywhere, a condition named by string or expecting False) `fire` runs the machine.
    """
    return not (
        machine.prepare_event
        or machine.before_state_change
        or machine.after_state_change
        or machine.finalize_event
        or machine.on_exception
        or transition.prepare
        or transition.before
        or transition.after
        or any(c.target is not True or not callable(c.func) for c in transition.conditions)
        or (transition.dest is not None and _callbacks(machine, transition.source))
        or (transition.dest is not None and _callbacks(machine, transition.dest))
    )


def _callbacks(machine: Machine, name: str) -> bool:
    state = machine.states[name]
    return bool(state.on_enter or state.on_exit)


def fire(
    seed: SeedState,
    trigger: str,
    command: Any,
    config: LifecycleConfig,
    layer: LayerState | None = None,
) -> Stage:
    """Run `trigger` on the shared machine for one seed; return the new stage or raise.

    The machine's own transition for the seed's stage and `trigger`, looked up on MACHINE at
    each call (a row added or removed at run time counts), is run here when it is plain
    (`_plain`): its conditions, then the move. Firing through `transitions` builds an
    `EventData`, walks its callback lists and resolves each condition: ~8 µs against ~1, most
    of a seed command's `decide` (a blend ramp decides an `AdjustBlend` per seed per step).
    """
    event = MACHINE.events.get(trigger)
    found = None if event is None else event.transitions.get(seed.stage)
    cursor = GateInput(seed, command, config, layer)
    # Anything else (an unknown trigger, no transition from this stage) is the machine's to
    # refuse, in its words.
    if event is None or not found or len(found) != 1 or not _plain(MACHINE, found[0]):
        return _fire_machine(seed, trigger, event, cursor)
    transition = found[0]
    data = _EventData(cursor)
    for condition in transition.conditions:
        check: Any = condition.func  # a function (`_plain` checked)
        # `Condition.check`: the function's result == its target (True, `_plain` checked).
        if check(data) != True:  # noqa: E712 - the same test as transitions'
            raise IllegalTransition(
                seed.seed, seed.stage.value, trigger, cursor.refusal or "gate refused"
            )
    if transition.dest is not None:
        cursor.state = Stage(transition.dest)
    return cursor.state


def _fire_machine(seed: SeedState, trigger: str, event: Any, cursor: GateInput) -> Stage:
    """`fire` through `transitions` itself (what `fire`'s own path must agree with)."""
    if event is None:
        raise IllegalTransition(
            seed.seed, seed.stage.value, trigger, f"unknown trigger {trigger!r}"
        )
    try:
        moved = event.trigger(cursor)
    except MachineError:
        allowed = sorted(t for (src, t) in TABLE if src is seed.stage)
        raise IllegalTransition(
            seed.seed,
            seed.stage.value,
            trigger,
            f"no transition {trigger!r} from {seed.stage.value}; "
            f"allowed: {', '.join(allowed) or 'none'}",
        ) from None
    if not moved:
        raise IllegalTransition(
            seed.seed, seed.stage.value, trigger, cursor.refusal or "gate refused"
        )
    return cursor.state
