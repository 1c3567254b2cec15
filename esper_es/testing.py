"""Property testing of the seed lifecycle (SPEC §2), for esper-es itself and for its users.

Two things live here:

* hypothesis strategies for seed commands (all 14 kinds, legal and illegal, with plausible
  and absurd telemetry) and for lifecycle configs;
* `LifecycleStateMachine`, a stateful test that drives the real command path (a
  `CommandBus` over a real `RunDatabase` in a fresh temporary directory per example) and
  checks invariants L1-L6 after every step. Subclass it to test your own gate thresholds
  (`config`), your own controller's commands (`command_strategy`) or your own seed layers
  (`layers`), and add your own `@invariant`s.

The invariants are checked against an independent model of the lifecycle written from the
SPEC's table (`SPEC_TABLE`), not from the code's `TABLE`, so a wrong row in the code is a
test failure rather than a tautology.

    from esper_es.testing import LifecycleStateMachine

    class MyLifecycle(LifecycleStateMachine):
        config = LifecycleConfig(min_training_steps=5, embargo_steps=10)

    TestMyLifecycle = MyLifecycle.TestCase
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar, cast

import attrs
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from esper_es.command_bus import CommandBus, Outcome
from esper_es.core import commands as c
from esper_es.core.config import LifecycleConfig
from esper_es.core.decider import fold
from esper_es.core.ids import CONTROLLER_STREAM, seed_stream
from esper_es.core.state import SeedState
from esper_es.errors import IllegalTransition
from esper_es.store.database import RunDatabase

__all__ = [
    "BLENDING",
    "KERNEL_HOLDING",
    "SPEC_INTERNAL",
    "SPEC_TABLE",
    "LayerSpec",
    "LifecycleStateMachine",
    "ModelSeed",
    "expected_refusal",
    "lifecycle_configs",
    "seed_commands",
    "telemetry_values",
    "unit_values",
]

_T = TypeVar("_T")

# --- the lifecycle as the SPEC writes it ------------------------------------------------
# Deliberately plain strings typed out from SPEC §2, sharing nothing with esper_es.core's
# definition: the stateful test compares the two.

#: (source stage, trigger) -> destination stage, row by row from the SPEC §2 table.
SPEC_TABLE: Final[Mapping[tuple[str, str], str]] = {
    ("DORMANT", "germinate"): "GERMINATED",
    ("GERMINATED", "start_training"): "TRAINING",
    ("GERMINATED", "cancel"): "CANCELLED",
    ("TRAINING", "cancel"): "CANCELLED",
    ("TRAINING", "start_grafting"): "GRAFTING",
    ("GRAFTING", "stabilize"): "STABILIZATION",
    ("STABILIZATION", "evaluate"): "EVALUATING",
    ("EVALUATING", "fine_tune"): "FINE_TUNING",
    ("FINE_TUNING", "fossilize"): "FOSSILIZED",
    ("TRAINING", "cull"): "CULLED",
    ("EVALUATING", "cull"): "CULLED",
    ("FINE_TUNING", "cull"): "CULLED",
    ("GRAFTING", "roll_back"): "ROLLED_BACK",
    ("STABILIZATION", "roll_back"): "ROLLED_BACK",
    ("EVALUATING", "roll_back"): "ROLLED_BACK",
    ("FINE_TUNING", "roll_back"): "ROLLED_BACK",
    ("CULLED", "embargo"): "EMBARGOED",
    ("CANCELLED", "embargo"): "EMBARGOED",
    ("ROLLED_BACK", "embargo"): "EMBARGOED",
    ("EMBARGOED", "release"): "DORMANT",
}
#: L3: the stages in which alpha may be non-zero.
BLENDING: Final = frozenset(
    {"GRAFTING", "STABILIZATION", "EVALUATING", "FINE_TUNING", "FOSSILIZED"}
)
#: L4: the stages in which a seed holds a kernel (GERMINATED ... FOSSILIZED).
KERNEL_HOLDING: Final = frozenset(
    {
        "GERMINATED",
        "TRAINING",
        "GRAFTING",
        "STABILIZATION",
        "EVALUATING",
        "FINE_TUNING",
        "FOSSILIZED",
    }
)
#: The two stage-keeping triggers that move blend factors. The SPEC table does not list them
#: (they are not transitions); alpha moves only while blending and is frozen once fossilized,
#: and a target can be set while a kernel is held and not yet fossilized.
SPEC_INTERNAL: Final[Mapping[str, frozenset[str]]] = {
    "adjust_blend": BLENDING - {"FOSSILIZED"},
    "set_blend_target": KERNEL_HOLDING - {"FOSSILIZED"},
}
_TRIGGERS: Final = tuple(sorted({t for _, t in SPEC_TABLE} | set(SPEC_INTERNAL)))


# --- strategies ---------------------------------------------------------------------------


def telemetry_values() -> st.SearchStrategy[float]:
    """Improvements, contributions, instabilities: mostly plausible, sometimes absurd."""
    return st.one_of(
        st.floats(-1.0, 1.0, allow_nan=False),
        st.sampled_from([0.0, -0.0, 1e-9, -1e-9, 0.5, 1.0]),
        st.sampled_from([1e6, -1e6, math.inf, -math.inf, math.nan]),
    )


def unit_values() -> st.SearchStrategy[float]:
    """Alphas and blend targets in [-0.5, 1.5], so the [0, 1] gate is exercised on both sides."""
    return st.one_of(
        st.sampled_from([0.0, 1.0, 0.5]),
        st.floats(-0.5, 1.5, allow_nan=False),
    )


def _reasons() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(["", "controller", "unstable"]), st.text(max_size=8))


def _field_strategies(trigger: str, blueprints: Sequence[str]) -> dict[str, st.SearchStrategy[Any]]:
    if trigger == "germinate":
        return {
            "blueprint": st.sampled_from(list(blueprints)),
            "kernel_id": st.integers(0, 2**32 - 1).map(lambda i: f"k-{i:08x}"),
            "init_seed": st.integers(0, 2**31 - 1),
            "blend_target": st.none() | unit_values(),
        }
    if trigger == "start_grafting":
        return {"improvement": telemetry_values()}
    if trigger == "fine_tune":
        return {"contribution": telemetry_values()}
    if trigger == "fossilize":
        return {"contribution": telemetry_values(), "instability": telemetry_values()}
    if trigger in ("cancel", "cull", "roll_back"):
        return {"reason": _reasons()}
    if trigger == "adjust_blend":
        return {"alpha": unit_values()}
    if trigger == "set_blend_target":
        return {"target": unit_values()}
    return {}


def seed_commands(
    seed_ids: Sequence[str],
    blueprints: Sequence[str],
    *,
    max_step: int = 1000,
    triggers: Iterable[str] | None = None,
) -> st.SearchStrategy[c.SeedCommand]:
    """Any seed command (all 14 kinds unless `triggers` narrows them), legal or not.

    Command ids are random UUIDs and steps lie in [0, max_step]; a sequence of them is not
    guaranteed unique ids or non-decreasing steps (`LifecycleStateMachine` re-stamps both).
    """
    if not seed_ids:
        raise ValueError("seed_commands needs at least one seed id")
    if not blueprints:
        raise ValueError("seed_commands needs at least one blueprint name")
    chosen = tuple(triggers) if triggers is not None else _TRIGGERS
    unknown = sorted(set(chosen) - set(c.COMMAND_FOR_TRIGGER))
    if unknown:
        known = ", ".join(sorted(c.COMMAND_FOR_TRIGGER))
        raise ValueError(f"unknown triggers {unknown}; known: {known}")
    common: dict[str, st.SearchStrategy[Any]] = {
        "command_id": st.uuids().map(str),
        "seed": st.sampled_from(list(seed_ids)),
        "step": st.integers(0, max_step),
    }
    return st.one_of(
        *(
            st.builds(c.COMMAND_FOR_TRIGGER[t], **common, **_field_strategies(t, blueprints))
            for t in chosen
        )
    )


def lifecycle_configs() -> st.SearchStrategy[LifecycleConfig]:
    """Valid gate thresholds, from permissive (all zero) to strict."""
    return st.builds(
        LifecycleConfig,
        min_training_steps=st.integers(0, 40),
        min_improvement=st.floats(-1.0, 1.0, allow_nan=False),
        min_stabilization_steps=st.integers(0, 20),
        contribution_threshold=st.floats(-1.0, 1.0, allow_nan=False),
        max_instability=st.floats(0.0, 2.0, allow_nan=False),
        embargo_steps=st.integers(0, 80),
        default_blend_target=st.floats(0.0, 1.0, allow_nan=False),
    )


# --- the model ----------------------------------------------------------------------------


@attrs.frozen
class LayerSpec:
    """A seed layer the stateful test registers before its first step."""

    name: str
    num_seeds: int
    blueprints: tuple[str, ...]
    shape_kind: str = "image"
    channels: int = 8

    def seed_ids(self) -> tuple[str, ...]:
        """`<name>/<index>` for each slot."""
        return tuple(f"{self.name}/{i}" for i in range(self.num_seeds))


@attrs.frozen
class ModelSeed:
    """What the model knows of one seed: enough to predict every accept or refuse."""

    stage: str = "DORMANT"
    alpha: float = 0.0
    target: float = 0.0
    entered_step: int = 0
    last_step: int = 0
    embargo_until: int | None = None


def _finite(x: float) -> bool:
    return math.isfinite(float(x))


def expected_refusal(
    seed: ModelSeed,
    command: c.SeedCommand,
    config: LifecycleConfig,
    layers: Mapping[str, LayerSpec],
) -> str | None:
    """Why the SPEC says `command` must be refused in `seed`'s state, or None if it is legal.

    Written from SPEC §2's table and gate column (and the config's documented thresholds);
    telemetry that is not a finite number is refused, since no event could record it.
    """
    trigger = command.TRIGGER
    internal = trigger in SPEC_INTERNAL
    if internal and seed.stage not in SPEC_INTERNAL[trigger]:
        return f"{trigger} is not allowed in {seed.stage}"
    if not internal and (seed.stage, trigger) not in SPEC_TABLE:
        return f"no transition {trigger} from {seed.stage}"
    if command.step < seed.last_step:
        return "step went backwards"
    steps_in_stage = command.step - seed.entered_step
    if isinstance(command, c.GerminateSeed):
        layer_name, _, index = command.seed.rpartition("/")
        layer = layers.get(layer_name)
        if layer is None:
            return "layer not registered"
        if not (index.isdigit() and int(index) < layer.num_seeds):
            return "no such slot"
        if command.blueprint not in layer.blueprints:
            return "blueprint does not fit"
        target = command.blend_target
        if target is not None and not (_finite(target) and 0.0 <= target <= 1.0):
            return "blend target outside [0, 1]"
    elif isinstance(command, c.StartGrafting):
        if steps_in_stage < config.min_training_steps:
            return "too few steps in TRAINING"
        if not (_finite(command.improvement) and command.improvement > config.min_improvement):
            return "training signal did not improve"
    elif isinstance(command, c.Stabilize):
        if seed.alpha + 1e-12 < seed.target:
            return "alpha has not reached its target"
    elif isinstance(command, c.StartEvaluation):
        if steps_in_stage < config.min_stabilization_steps:
            return "too few steps in STABILIZATION"
    elif isinstance(command, c.StartFineTuning):
        if not (
            _finite(command.contribution) and command.contribution >= config.contribution_threshold
        ):
            return "contribution below threshold"
    elif isinstance(command, c.FossilizeSeed):
        if not (
            _finite(command.contribution) and command.contribution >= config.contribution_threshold
        ):
            return "contribution below threshold"
        if not (_finite(command.instability) and command.instability <= config.max_instability):
            return "unstable"
    elif isinstance(command, c.ReleaseSeed):
        if seed.embargo_until is not None and command.step < seed.embargo_until:
            return "embargo not over"
    elif isinstance(command, c.AdjustBlend):
        if not (_finite(command.alpha) and 0.0 <= command.alpha <= 1.0):
            return "alpha outside [0, 1]"
    elif isinstance(command, c.SetBlendTarget) and not (
        _finite(command.target) and 0.0 <= command.target <= 1.0
    ):
        return "target outside [0, 1]"
    return None


def _model_after(seed: ModelSeed, command: c.SeedCommand, config: LifecycleConfig) -> ModelSeed:
    """The model seed after an accepted `command` (whose legality was already checked)."""
    step = command.step
    if isinstance(command, c.AdjustBlend):
        return attrs.evolve(seed, alpha=float(command.alpha), last_step=step)
    if isinstance(command, c.SetBlendTarget):
        return attrs.evolve(seed, target=float(command.target), last_step=step)
    dest = SPEC_TABLE[(seed.stage, command.TRIGGER)]
    if isinstance(command, c.GerminateSeed):
        target = (
            config.default_blend_target if command.blend_target is None else command.blend_target
        )
        return ModelSeed(dest, 0.0, float(target), step, step, None)
    if isinstance(command, c.ReleaseSeed):
        return ModelSeed(dest, 0.0, 0.0, step, step, None)
    until = (
        step + config.embargo_steps if isinstance(command, c.EmbargoSeed) else seed.embargo_until
    )
    return ModelSeed(
        dest,
        seed.alpha if dest in BLENDING else 0.0,
        seed.target if dest in KERNEL_HOLDING else 0.0,
        step,
        step,
        until,
    )


@attrs.frozen
class _Check:
    """One executed command, with the model's prediction, for the L1 invariant to judge."""

    command: c.SeedCommand
    before: ModelSeed
    predicted_refusal: str | None
    outcome: Outcome


def _default_tmp_root() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


_STRATEGIES: dict[tuple[Any, ...], st.SearchStrategy[Any]] = {}


# --- the stateful test --------------------------------------------------------------------


class LifecycleStateMachine(RuleBasedStateMachine):
    """Drives random command sequences through the real command path and checks L1-L6.

    Subclass and override `config`, `layers`, `command_strategy` and/or `guided`; add
    `@invariant()` methods for your own properties. `TestCase` runs it under pytest.
    """

    #: Gate thresholds under test.
    config: ClassVar[LifecycleConfig] = LifecycleConfig()
    #: Seed layers registered before the first step.
    layers: ClassVar[tuple[LayerSpec, ...]] = (
        LayerSpec("layer1", 2, ("conv3x3", "mlp")),
        LayerSpec("layer2", 1, ("lora",)),
    )
    #: Also run a rule that draws only stage-legal triggers, so deep lifecycles are reached;
    #: set False to run nothing but `command_strategy`'s commands.
    guided: ClassVar[bool] = True
    #: Where per-example run databases go (None: the system's temporary directory). tmpfs
    #: makes each commit's fsync free, which roughly halves the cost of an example.
    tmp_root: ClassVar[str | None] = _default_tmp_root()
    #: When set to a Counter, each example adds one count per stage any seed reached.
    stage_counter: ClassVar[Counter[str] | None] = None

    @classmethod
    def seed_ids(cls) -> tuple[str, ...]:
        """The registered seeds plus a slot out of range and a seed of an unregistered layer."""
        ids = [s for layer in cls.layers for s in layer.seed_ids()]
        if cls.layers:
            last = cls.layers[-1]
            ids.append(f"{last.name}/{last.num_seeds + 3}")
        ids.append("unregistered/0")
        return tuple(ids)

    @classmethod
    def blueprints(cls) -> tuple[str, ...]:
        """Every blueprint some layer takes, plus one that no layer takes."""
        names = sorted({b for layer in cls.layers for b in layer.blueprints})
        return (*names, "no_such_blueprint")

    @classmethod
    def command_strategy(
        cls, seed_ids: Sequence[str], blueprints: Sequence[str]
    ) -> st.SearchStrategy[c.SeedCommand]:
        """The commands the random rules execute; override to plug in your controller's."""
        return seed_commands(seed_ids, blueprints)

    @classmethod
    def _source(cls) -> st.SearchStrategy[c.SeedCommand]:
        return cls._cached(
            ("source",), lambda: cls.command_strategy(cls.seed_ids(), cls.blueprints())
        )

    @classmethod
    def _batches(cls) -> st.SearchStrategy[list[c.SeedCommand]]:
        return cls._cached(("batch",), lambda: st.lists(cls._source(), min_size=1, max_size=5))

    @classmethod
    def _cached(
        cls, key: tuple[str, ...], make: Callable[[], st.SearchStrategy[_T]]
    ) -> st.SearchStrategy[_T]:
        # Rules draw through `runner().flatmap`, which would otherwise rebuild (and re-validate)
        # a strategy at every draw; that dominated the cost of an example while shrinking.
        full = (cls, *key)
        strategy = _STRATEGIES.get(full)
        if strategy is None:
            strategy = _STRATEGIES[full] = make()
        return cast("st.SearchStrategy[_T]", strategy)

    # --- set-up and tear-down -------------------------------------------------------------

    def __init__(self) -> None:
        super().__init__()
        self._dir = Path(tempfile.mkdtemp(prefix="esper-lifecycle-", dir=self.tmp_root))
        try:
            self.db = RunDatabase.create(self._dir / "run.db", "lifecycle-test", audit=False)
        except BaseException:
            # Hypothesis calls teardown only on a machine that was built.
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self.bus = CommandBus(self.db, self.config)
        self.step = 0
        self._next_id = 0
        self.layer_specs = {layer.name: layer for layer in self.layers}
        self._slots = [s for layer in self.layers for s in layer.seed_ids()]
        self.model: dict[str, ModelSeed] = {s: ModelSeed() for s in self.seed_ids()}
        self.ever_fossilized: set[str] = set()
        self.reached: set[str] = {"DORMANT"}
        self._checks: list[_Check] = []
        self._batch_failures: list[str] = []
        registrations = [
            c.RegisterSeedLayer(
                command_id=f"register-{layer.name}",
                layer=layer.name,
                shape_kind=layer.shape_kind,
                channels=layer.channels,
                num_seeds=layer.num_seeds,
                blueprints=layer.blueprints,
            )
            for layer in self.layers
        ]
        refused = [o.refused for o in self.bus.execute_all(registrations) if not o.accepted]
        if refused:
            self.db.close()
            shutil.rmtree(self._dir, ignore_errors=True)
            raise ValueError(f"layer registration refused: {refused[0]}")

    def teardown(self) -> None:
        """Close the run database and delete its directory."""
        try:
            self.db.close()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
        for stage in sorted(self.reached):
            event(f"reached {stage}")
        if self.stage_counter is not None:
            self.stage_counter.update(self.reached)

    # --- rules ----------------------------------------------------------------------------

    @rule(
        command=st.runner().flatmap(lambda m: m._source()),
        delta=st.integers(0, 3),
    )
    def execute_one(self, command: c.SeedCommand, delta: int) -> None:
        """Execute one command at the current step (plus `delta`)."""
        self.step += delta
        self._execute([command])

    @rule(
        commands=st.runner().flatmap(lambda m: m._batches()),
        delta=st.integers(0, 3),
    )
    def execute_batch(self, commands: list[c.SeedCommand], delta: int) -> None:
        """Execute 1-5 commands as one step boundary (one `execute_all`, one transaction)."""
        self.step += delta
        self._execute(commands)

    @precondition(lambda self: self.guided and bool(self._slots))
    @rule(
        command=st.runner().flatmap(lambda m: m._guided_command()),
        delta=st.integers(0, 25),
    )
    def execute_guided(self, command: c.SeedCommand, delta: int) -> None:
        """Execute a command whose trigger the seed's stage allows (its gates may refuse)."""
        self.step += delta
        self._execute([command])

    @precondition(lambda self: self.guided and bool(self._slots))
    @rule(
        seed=st.runner().flatmap(lambda m: st.sampled_from(m._slots)),
        moves=st.integers(1, 8),
        gap=st.integers(0, 25),
    )
    def walk(self, seed: str, moves: int, gap: int) -> None:
        """Move one seed up to `moves` times along the main path, `gap` steps apart."""
        for _ in range(moves):
            command = self._forward_command(seed)
            if command is None:
                return
            self.step += gap
            self._execute([command])

    @rule(delta=st.integers(1, 60))
    def advance(self, delta: int) -> None:
        """Let training steps pass (for min-step gates and embargoes)."""
        self.step += delta

    def _guided_command(self) -> st.SearchStrategy[c.SeedCommand]:
        def for_seed(seed: str) -> st.SearchStrategy[c.SeedCommand]:
            stage = self.model[seed].stage
            legal = sorted(
                {t for (src, t) in SPEC_TABLE if src == stage}
                | {t for t, srcs in SPEC_INTERNAL.items() if stage in srcs}
            )
            anything = self._cached(
                ("legal", seed, stage),
                lambda: seed_commands([seed], self.blueprints(), triggers=legal or _TRIGGERS),
            )
            forward = self._forward_command(seed)
            return anything if forward is None else st.just(forward) | anything

        return st.sampled_from(self._slots).flatmap(for_seed)

    def _forward_command(self, seed: str) -> c.SeedCommand | None:
        """The command, with telemetry that clears this config's gates, that moves `seed` on."""
        model, cfg = self.model[seed], self.config
        ids: dict[str, Any] = {"command_id": "forward", "seed": seed}
        stage = model.stage

        def above(threshold: float, margin: float) -> float:
            return threshold + margin if math.isfinite(threshold) else margin

        if stage == "DORMANT":
            layer = self.layer_specs[seed.rpartition("/")[0]]
            blueprint = layer.blueprints[0] if layer.blueprints else "no_such_blueprint"
            return c.GerminateSeed(**ids, blueprint=blueprint, kernel_id=f"k-{seed}", init_seed=0)
        if stage == "TRAINING":
            return c.StartGrafting(**ids, improvement=above(cfg.min_improvement, 0.5))
        if stage == "GRAFTING" and model.alpha + 1e-12 < model.target:
            return c.AdjustBlend(**ids, alpha=model.target)
        if stage == "EVALUATING":
            return c.StartFineTuning(**ids, contribution=above(cfg.contribution_threshold, 0.5))
        if stage == "FINE_TUNING":
            return c.FossilizeSeed(
                **ids,
                contribution=above(cfg.contribution_threshold, 0.5),
                instability=cfg.max_instability / 2,
            )
        simple: dict[str, type[c.SeedCommand]] = {
            "GERMINATED": c.StartTraining,
            "GRAFTING": c.Stabilize,
            "STABILIZATION": c.StartEvaluation,
            "CULLED": c.EmbargoSeed,
            "CANCELLED": c.EmbargoSeed,
            "ROLLED_BACK": c.EmbargoSeed,
            "EMBARGOED": c.ReleaseSeed,
        }
        kind = simple.get(stage)
        return None if kind is None else kind(**ids)

    def _execute(self, commands: Sequence[c.SeedCommand]) -> None:
        stamped = []
        for command in commands:
            self._next_id += 1
            stamped.append(attrs.evolve(command, command_id=f"cmd-{self._next_id}", step=self.step))
        touched = {cmd.seed for cmd in stamped}
        versions = {s: self._db_version(seed_stream(s)) for s in touched}
        controller = self._db_version(CONTROLLER_STREAM)
        outcomes = self.bus.execute_all(stamped)

        appended: dict[str, list[str]] = {s: [] for s in touched}
        refusals = 0
        for command, outcome in zip(stamped, outcomes, strict=True):
            seed = command.seed
            before = self.model.setdefault(seed, ModelSeed())
            predicted = expected_refusal(before, command, self.config, self.layer_specs)
            self._checks.append(_Check(command, before, predicted, outcome))
            if outcome.accepted:
                appended[seed].extend(type(e).__name__ for e in outcome.events)
                if predicted is None:
                    self.model[seed] = _model_after(before, command, self.config)
            else:
                refusals += 1
        # L1 "appends nothing": the seed streams grew by exactly the accepted events.
        for seed, types in appended.items():
            new = [
                r.type
                for r in self.db.read(stream=seed_stream(seed), branch=None)
                if r.stream_version > versions[seed]
            ]
            if new != types:
                self._batch_failures.append(
                    f"stream {seed_stream(seed)} got {new} from this batch, expected exactly the "
                    f"accepted commands' events {types}"
                )
        grown = self._db_version(CONTROLLER_STREAM) - controller
        if self.bus.record_refusals and grown != refusals:
            self._batch_failures.append(
                f"{refusals} refusals, but the controller stream grew by {grown} events"
            )
        for seed in touched:
            stage = self.bus.seed(seed).stage.value
            self.reached.add(stage)
            if stage == "FOSSILIZED":
                self.ever_fossilized.add(seed)

    def _db_version(self, stream: str) -> int:
        row = self.db.connection.execute(
            "SELECT MAX(stream_version) FROM events WHERE stream=?", (stream,)
        ).fetchone()
        return int(row[0] or 0)

    def _known_seeds(self) -> list[str]:
        return sorted(set(self.model) | set(self.bus.seeds))

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def L1_only_table_transitions(self) -> None:
        """L1: only SPEC-table transitions happen; refusals are typed, named and append nothing."""
        checks, self._checks = self._checks, []
        failures, self._batch_failures = self._batch_failures, []
        assert not failures, "L1 violated: " + "; ".join(failures)
        for ch in checks:
            cmd, before, out = ch.command, ch.before, ch.outcome
            what = f"{type(cmd).__name__} on {cmd.seed} in {before.stage}"
            if out.refused is not None:
                err = out.refused
                assert isinstance(err, IllegalTransition), f"L1 violated: {what} refused untyped"
                assert (err.seed, err.state, err.trigger) == (
                    cmd.seed,
                    before.stage,
                    cmd.TRIGGER,
                ), (
                    f"L1 violated: refusal of {what} names seed {err.seed!r}, state {err.state!r}, "
                    f"trigger {err.trigger!r}"
                )
                for name in (cmd.seed, before.stage, cmd.TRIGGER):
                    assert name in str(err), (
                        f"L1 violated: refusal message {str(err)!r} lacks {name!r}"
                    )
                assert ch.predicted_refusal is not None, (
                    f"L1 violated: {what} is legal per SPEC §2 but was refused: {err.reason}"
                )
                assert not out.events and not out.seqs, f"L1 violated: refused {what} has events"
            else:
                assert ch.predicted_refusal is None, (
                    f"L1 violated: {what} was accepted, but SPEC §2 refuses it "
                    f"({ch.predicted_refusal})"
                )
                assert len(out.events) == 1 and len(out.seqs) == 1, (
                    f"L1 violated: accepted {what} produced {len(out.events)} events"
                )
        for seed in self._known_seeds():
            live, model = self.bus.seed(seed), self.model.get(seed, ModelSeed())
            assert live.stage.value == model.stage, (
                f"L1 violated: seed {seed} is {live.stage.value}; the SPEC table leads to "
                f"{model.stage}"
            )

    @invariant()
    def L2_fossilized_is_terminal(self) -> None:
        """L2: a seed that was ever FOSSILIZED is FOSSILIZED still."""
        for seed in self.ever_fossilized:
            stage = self.bus.seed(seed).stage.value
            assert stage == "FOSSILIZED", f"L2 violated: fossilized seed {seed} is now {stage}"

    @invariant()
    def L3_alpha_in_unit_interval(self) -> None:
        """L3: alpha in [0, 1], and 0 outside the blending stages."""
        for seed in self._known_seeds():
            s = self.bus.seed(seed)
            assert 0.0 <= s.alpha <= 1.0, f"L3 violated: seed {seed} has alpha {s.alpha!r}"
            if s.stage.value not in BLENDING:
                assert s.alpha == 0.0, (
                    f"L3 violated: seed {seed} in {s.stage.value} has alpha {s.alpha!r}, not 0"
                )

    @invariant()
    def L4_kernel_exactly_in_kernel_stages(self) -> None:
        """L4 (state part): a seed holds a kernel exactly in GERMINATED ... FOSSILIZED."""
        for seed in self._known_seeds():
            s = self.bus.seed(seed)
            holds = s.kernel_id is not None
            assert holds == (s.stage.value in KERNEL_HOLDING), (
                f"L4 violated: seed {seed} in {s.stage.value} has kernel_id {s.kernel_id!r}"
            )
            assert (s.blueprint is not None) == holds, (
                f"L4 violated: seed {seed} in {s.stage.value} has blueprint {s.blueprint!r}"
            )

    @invariant()
    def L5_fold_equals_live_state(self) -> None:
        """L5: folding each seed's events read back from the database gives the live state."""
        for seed in self._known_seeds():
            events = [r.event for r in self.db.read(stream=seed_stream(seed))]
            folded = fold(SeedState.dormant(seed), events)
            live = self.bus.seed(seed)
            assert folded == live, f"L5 violated: seed {seed}: folded {folded!r} != live {live!r}"

    @invariant()
    def L6_versions_gap_free(self) -> None:
        """L6: every stream's versions are 1..n and the global seqs 1..N, with no gap."""
        rows = self.db.connection.execute(
            "SELECT seq, branch, stream, stream_version FROM events ORDER BY seq"
        ).fetchall()
        seqs = [r[0] for r in rows]
        assert seqs == list(range(1, len(rows) + 1)), f"L6 violated: seqs {seqs} have a gap"
        per_stream: dict[tuple[str, str], list[int]] = {}
        for _, branch, stream, version in rows:
            per_stream.setdefault((branch, stream), []).append(version)
        for (branch, stream), versions in per_stream.items():
            assert versions == list(range(1, len(versions) + 1)), (
                f"L6 violated: stream {stream} on {branch} has versions {versions}"
            )
            live = self.bus.version_of(stream)
            assert live == len(versions), (
                f"L6 violated: stream {stream} is at version {len(versions)} in the log, "
                f"{live} live"
            )
