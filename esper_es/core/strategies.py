"""The four orchestration strategies (SPEC §4): a decision becomes a plan of seed commands.

Planning is pure: it reads the layer's seed states, the seeds' performance and the ranked
blueprint candidates, and returns commands. It plans only what the lifecycle allows from each
seed's current stage (a FOSSILIZED seed is never culled, a germination goes only into a
DORMANT slot); whatever the lifecycle still refuses when the plan is executed (the state moved
on meanwhile) is recorded by the command bus as `CommandRefused`, never forced.

- DIVERSIFY (`add_seed`, `add_neurons`): germinate kernels of blueprint kinds not yet active
  in the layer into dormant seeds, best-ranked first (`num_seeds`, default 2).
- REPLACE (`optimize_parameters`): remove the worst-scoring active seeds (`num_replace`,
  default 1, or exactly `seeds`) and germinate a better-ranked kind *in each one's own slot*:
  the removal, an embargo of 0 steps (the slot takes another kind, so it cannot thrash on
  its own), the release and the germination, in that order at one boundary. Other seeds are
  left untouched (SPEC §4: "in their place").
- SPECIALIZE (`remove_seed`): keep the best-scoring active seeds (`keep`, default 1), raise
  their blend targets (`target`, default 1.0); remove the other active seeds, or exactly
  `seeds` when named (the best `keep` of the remaining active seeds are raised). Fossilized
  seeds are always kept.
- ENSEMBLE (`modify_architecture`): germinate every dormant slot, cycling through the ranked
  kinds (inactive kinds first), and give every non-fossilized kernel-holding seed the same
  blend target: `target`, or 1/n over those seeds and the new ones.

*Removing* a seed is `cull` where the lifecycle allows it (TRAINING, EVALUATING, FINE_TUNING),
else `roll_back` (GRAFTING, STABILIZATION), else `cancel` (GERMINATED). Every strategy also
reads `parameters.blueprints` (a list) or `parameters.blueprint`, which replace the ranked
candidates; a named blueprint that does not fit the layer is an error, not a plan.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from esper_es.core import commands as c
from esper_es.core.decisions import (
    AdaptationDecision,
    InvalidDecision,
    SeedStats,
    Strategy,
    UnknownLayer,
)
from esper_es.core.lifecycle import KERNEL_STAGES, Stage
from esper_es.core.state import LayerState, SeedState
from esper_es.errors import UnknownBlueprint

#: `germination(seed_id, blueprint, command_id) -> (kernel_id, init_seed[, config])`: the
#: kernel a germination loads; `config` (the blueprint config it is built with, recorded in
#: `SeedGerminated`) may be left out, meaning the blueprint's defaults.
Germination = Callable[[str, str, str], tuple[str, int] | tuple[str, int, Mapping[str, Any]]]

_CULLABLE = frozenset({Stage.TRAINING, Stage.EVALUATING, Stage.FINE_TUNING})
_ROLLBACKABLE = frozenset({Stage.GRAFTING, Stage.STABILIZATION})
_CANCELLABLE = frozenset({Stage.GERMINATED})


@attrs.frozen
class Plan:
    """A decision, the strategy that carries it out, its commands in order, and notes."""

    decision: AdaptationDecision
    strategy: Strategy
    commands: tuple[c.SeedCommand, ...]
    notes: str

    def describe(self) -> list[dict[str, Any]]:
        """The commands as JSON-able dicts (for `AdaptationPlanned.commands` and `details`)."""
        return [describe_command(cmd) for cmd in self.commands]


def describe_command(cmd: c.Command) -> dict[str, Any]:
    """A command as a JSON-able dict: its type, then its fields."""
    fields = attrs.asdict(cmd)
    fields.pop("event", None)
    return {"type": type(cmd).__name__, **fields}


def layer_for(decision: AdaptationDecision, layers: Mapping[str, LayerState]) -> LayerState:
    """The registered layer a decision names; UnknownLayer (listing the known ones) if none."""
    layer = layers.get(decision.layer_name)
    if layer is None:
        raise UnknownLayer(decision.layer_name, layers)
    return layer


def plan(
    decision: AdaptationDecision,
    *,
    layer: LayerState,
    seeds: Mapping[str, SeedState],
    stats: Mapping[str, SeedStats],
    candidates: Sequence[str],
    step: int,
    new_id: Callable[[], str],
    germination: Germination,
) -> Plan:
    """Plan `decision` on `layer` with its strategy; see the module docstring for the rules."""
    if decision.layer_name != layer.name:
        raise InvalidDecision(
            f"decision is for layer {decision.layer_name!r}, planned on {layer.name!r}"
        )
    strategy = decision.strategy()
    p = _Planner(decision, layer, seeds, stats, candidates, step, new_id, germination)
    {
        Strategy.DIVERSIFY: p.diversify,
        Strategy.REPLACE: p.replace,
        Strategy.SPECIALIZE: p.specialize,
        Strategy.ENSEMBLE: p.ensemble,
    }[strategy]()
    if not p.commands:
        p.notes.append("nothing to do: no command planned")
    return Plan(decision, strategy, tuple(p.commands), "; ".join(p.notes))


def _int_param(params: Mapping[str, Any], name: str, default: int, least: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InvalidDecision(f"parameter {name!r} must be an integer >= {least}, got {value!r}")
    return value


def _target_param(params: Mapping[str, Any], default: float | None) -> float | None:
    value = params.get("target", default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise InvalidDecision(f"parameter 'target' must be a number in [0, 1], got {value!r}")
    return float(value)


class _Planner:
    """One planning pass: the layer's seeds in index order, and the commands so far."""

    def __init__(
        self,
        decision: AdaptationDecision,
        layer: LayerState,
        seeds: Mapping[str, SeedState],
        stats: Mapping[str, SeedStats],
        candidates: Sequence[str],
        step: int,
        new_id: Callable[[], str],
        germination: Germination,
    ) -> None:
        self.d = decision
        self.params = decision.parameters
        self.layer = layer
        self.seeds = [seeds.get(sid) or SeedState.dormant(sid) for sid in layer.seed_ids()]
        self.stats = stats
        self.candidates = self._candidates(candidates)
        self.step = step
        self.new_id = new_id
        self.germination = germination
        self.commands: list[c.SeedCommand] = []
        self.notes: list[str] = []

    # --- shared pieces --------------------------------------------------------------------

    def _candidates(self, ranked: Sequence[str]) -> list[str]:
        named = self.params.get("blueprints", self.params.get("blueprint"))
        if named is not None:
            names = [named] if isinstance(named, str) else list(named)
            for name in names:
                if not isinstance(name, str) or name not in self.layer.blueprints:
                    raise UnknownBlueprint(str(name), self.layer.blueprints, self.layer.name)
            return list(dict.fromkeys(names))
        # Ranking may know blueprints this layer cannot take; the gate would refuse them.
        return [b for b in dict.fromkeys(ranked) if b in self.layer.blueprints]

    def _score(self, s: SeedState) -> float:
        st = self.stats.get(s.seed)
        return st.score() if st is not None else 0.0

    def dormant(self) -> list[SeedState]:
        return [s for s in self.seeds if s.stage is Stage.DORMANT]

    def active(self) -> list[SeedState]:
        """Kernel-holding, non-fossilized seeds: what a strategy may still change."""
        return [
            s for s in self.seeds if s.stage in KERNEL_STAGES and s.stage is not Stage.FOSSILIZED
        ]

    def active_kinds(self, excluding: frozenset[str] | set[str] = frozenset()) -> set[str]:
        return {
            s.blueprint
            for s in self.seeds
            if s.stage in KERNEL_STAGES and s.blueprint is not None and s.seed not in excluding
        }

    def base(self, seed: str) -> dict[str, Any]:
        return {
            "command_id": self.new_id(),
            "seed": seed,
            "step": self.step,
            "correlation_id": self.d.decision_id,
        }

    def germinate(self, seed: str, blueprint: str, target: float | None = None) -> None:
        kw = self.base(seed)
        made = self.germination(seed, blueprint, kw["command_id"])
        self.commands.append(
            c.GerminateSeed(
                blueprint=blueprint,
                kernel_id=made[0],
                init_seed=int(made[1]),
                blend_target=target,
                config=dict(made[2]) if len(made) > 2 else {},
                **kw,
            )
        )

    def remove(self, s: SeedState, why: str) -> bool:
        """Plan the lifecycle's way out for `s`; False if its stage has none."""
        reason = f"{self.d.strategy().value}: {why}"
        if s.stage in _CULLABLE:
            self.commands.append(c.CullSeed(reason=reason, **self.base(s.seed)))
        elif s.stage in _ROLLBACKABLE:
            self.commands.append(c.RollBackSeed(reason=reason, **self.base(s.seed)))
        elif s.stage in _CANCELLABLE:
            self.commands.append(c.CancelSeed(reason=reason, **self.base(s.seed)))
        else:
            self.notes.append(f"{s.seed} cannot be removed from {s.stage.value}")
            return False
        return True

    def set_target(self, s: SeedState, target: float) -> None:
        if s.blend_target == target:
            self.notes.append(f"{s.seed} already has blend target {target:g}")
            return
        self.commands.append(c.SetBlendTarget(target=target, **self.base(s.seed)))

    def named_seeds(self, named: Sequence[Any]) -> list[SeedState]:
        """The layer's seeds with the ids in `named`, in that order."""
        by_id = {s.seed: s for s in self.seeds}
        out = []
        for sid in named:
            s = by_id.get(str(sid))
            if s is None:
                raise InvalidDecision(f"seed {sid!r} is not in layer {self.layer.name!r}")
            out.append(s)
        return out

    def ranked_seeds(self, seeds: list[SeedState], best_first: bool) -> list[SeedState]:
        sign = -1.0 if best_first else 1.0
        return sorted(seeds, key=lambda s: (sign * self._score(s), s.seed))

    # --- the strategies -------------------------------------------------------------------

    def diversify(self) -> None:
        want = _int_param(self.params, "num_seeds", 2, 1)
        free = self.dormant()
        active = self.active_kinds()
        kinds = [b for b in self.candidates if b not in active]
        if not free:
            self.notes.append(f"layer {self.layer.name} has no dormant seed")
            return
        if not kinds:
            self.notes.append(
                f"every fitting blueprint kind is already active in {self.layer.name} "
                f"({', '.join(sorted(active)) or 'none'})"
            )
            return
        n = min(want, len(free), len(kinds))
        for slot, kind in zip(free[:n], kinds[:n], strict=True):
            self.germinate(slot.seed, kind)
        if n < want:
            self.notes.append(
                f"asked for {want} seeds, planned {n} "
                f"({len(free)} dormant, {len(kinds)} inactive kinds)"
            )

    def replace(self) -> None:
        named = self.params.get("seeds")
        active = self.active()
        if named is not None:
            victims = self.named_seeds(named)
        else:
            k = _int_param(self.params, "num_replace", 1, 1)
            victims = self.ranked_seeds(active, best_first=False)[:k]
        if not victims:
            held = [s for s in self.seeds if s.stage is Stage.FOSSILIZED]
            self.notes.append(
                f"layer {self.layer.name} has no active seed to replace"
                + (f" ({len(held)} fossilized, which are kept for good)" if held else "")
            )
            return
        removed = [s for s in victims if self.remove(s, f"score {self._score(s):.4g}")]
        if not removed:
            return
        kept_kinds = self.active_kinds(excluding={s.seed for s in removed})
        removed_kinds = {s.blueprint for s in removed}
        for s in removed:
            better = [b for b in self.candidates if b != s.blueprint]
            # Prefer a kind neither kept nor just removed for scoring badly.
            fresh = [b for b in better if b not in kept_kinds]
            untried = [b for b in fresh if b not in removed_kinds]
            choices = untried or fresh or better
            if not choices:
                self.notes.append(f"no other blueprint fits to replace {s.seed}")
                continue
            choice = choices[0]
            self.commands.append(c.EmbargoSeed(steps=0, **self.base(s.seed)))
            self.commands.append(c.ReleaseSeed(**self.base(s.seed)))
            self.germinate(s.seed, choice)
            kept_kinds.add(choice)

    def specialize(self) -> None:
        keep = _int_param(self.params, "keep", 1, 1)
        target = _target_param(self.params, 1.0)
        assert target is not None
        active = self.ranked_seeds(self.active(), best_first=True)
        named = self.params.get("seeds")
        if named is not None:
            # Exactly these go; the best `keep` of the other active seeds are raised.
            rest = self.named_seeds(named)
            gone = {s.seed for s in rest}
            active = [s for s in active if s.seed not in gone]
        elif not active:
            self.notes.append(f"layer {self.layer.name} has no active seed to specialize")
            return
        else:
            rest = active[keep:]
        for s in active[:keep]:
            self.set_target(s, target)
        for s in rest:
            self.remove(s, f"score {self._score(s):.4g} below the kept seeds")
        if not rest:
            self.notes.append(f"{len(active)} active seed(s), keep {keep}: nothing to remove")

    def ensemble(self) -> None:
        free = self.dormant()
        active = self.active()
        active_kinds = self.active_kinds()
        order = [b for b in self.candidates if b not in active_kinds] + [
            b for b in self.candidates if b in active_kinds
        ]
        if free and not order:
            self.notes.append(f"no blueprint fits layer {self.layer.name}")
            free = []
        n = len(active) + len(free)
        if n == 0:
            self.notes.append(f"layer {self.layer.name} has no seed to ensemble")
            return
        target = _target_param(self.params, None)
        equal = target if target is not None else 1.0 / n
        for s in active:
            self.set_target(s, equal)
        for i, slot in enumerate(free):
            self.germinate(slot.seed, order[i % len(order)], target=equal)
