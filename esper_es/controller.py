"""Controllers: telemetry in, adaptation decisions out (SPEC §4).

The interface, for anyone who wants to plug in their own controller:

- A controller is any object with `decide(telemetry: Telemetry) -> list[AdaptationDecision]`
  (the `Controller` protocol). The trainer calls it at step boundaries and hands each decision
  to the orchestrator, which records it (`AdaptationDecided`, with `telemetry.to_dict()` and
  its digest), plans it with the decision's strategy and commits the plan at that boundary.
- It must be a **pure function of the telemetry**: same telemetry, same decisions, and no
  hidden state. Replay can re-run the controller and compare its decisions with the recorded
  ones (SPEC §6), which only works if nothing but the telemetry drives it. Cooldowns and
  per-epoch caps are therefore computed from telemetry fields (`last_decision_step`,
  `decisions_this_epoch`), which the trainer fills in from the log.
- Decisions name a layer that exists in `telemetry.layers`, one of the adaptation types of
  `esper_es.core.decisions.AdaptationType`, and a `reason` a person can read in `history`.
  Set `telemetry_digest=telemetry.digest()` so the audit log ties the decision to its input.

`HeuristicController` is the built-in one; its rules are in its docstring and in
`docs/controller.md`, with a worked example of a custom controller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import attrs
from attrs import validators as v

from esper_es.core.decisions import AdaptationDecision, AdaptationType, SeedStats, telemetry_digest
from esper_es.core.lifecycle import BLENDING_STAGES, KERNEL_STAGES, Stage
from esper_es.policy.settings import LearnedConfig

_KERNEL = frozenset(s.value for s in KERNEL_STAGES)
_BLENDING = frozenset(s.value for s in BLENDING_STAGES)
_FOSSILIZED = Stage.FOSSILIZED.value
_DORMANT = Stage.DORMANT.value


def _opt(x: float | None) -> float | None:
    return None if x is None else float(x)


@attrs.frozen(kw_only=True)
class SeedTelemetryView:
    """One seed as the controller sees it."""

    seed: str
    stage: str = _DORMANT
    alpha: float = 0.0
    blueprint: str | None = None
    improvement: float | None = None
    contribution: float | None = None
    grad_norm_ratio: float | None = None

    @property
    def holds_kernel(self) -> bool:
        """True in GERMINATED … FOSSILIZED."""
        return self.stage in _KERNEL

    @property
    def active(self) -> bool:
        """Holds a kernel and is not fossilized: something a strategy may still change."""
        return self.holds_kernel and self.stage != _FOSSILIZED

    @property
    def blending(self) -> bool:
        """In a blending stage other than FOSSILIZED."""
        return self.stage in _BLENDING and self.stage != _FOSSILIZED

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (non-finite numbers become None: canonical JSON refuses them)."""
        return {
            "seed": self.seed,
            "stage": self.stage,
            "alpha": _finite(self.alpha),
            "blueprint": self.blueprint,
            "improvement": _finite(self.improvement),
            "contribution": _finite(self.contribution),
            "grad_norm_ratio": _finite(self.grad_norm_ratio),
        }


@attrs.frozen(kw_only=True)
class LayerTelemetry:
    """One seed layer: its seeds and the blueprints that fit it."""

    name: str
    num_seeds: int
    seeds: tuple[SeedTelemetryView, ...] = ()
    blueprints: tuple[str, ...] = ()

    def dormant(self) -> tuple[SeedTelemetryView, ...]:
        """Seeds in DORMANT (slots a germination can use)."""
        return tuple(s for s in self.seeds if s.stage == _DORMANT)

    def active(self) -> tuple[SeedTelemetryView, ...]:
        """Seeds holding a kernel that is not fossilized."""
        return tuple(s for s in self.seeds if s.active)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "name": self.name,
            "num_seeds": self.num_seeds,
            "blueprints": list(self.blueprints),
            "seeds": [s.to_dict() for s in self.seeds],
        }


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(x) for x in values)


@attrs.frozen(kw_only=True)
class Telemetry:
    """Everything a controller may read at one step boundary."""

    step: int
    epoch: int = 0
    steps_per_epoch: int = 0
    train_loss_history: tuple[float, ...] = attrs.field(default=(), converter=_floats)
    val_loss_history: tuple[float, ...] = attrs.field(default=(), converter=_floats)
    val_accuracy_history: tuple[float, ...] = attrs.field(default=(), converter=_floats)
    last_decision_step: int | None = None
    decisions_this_epoch: int = 0
    layers: tuple[LayerTelemetry, ...] = ()
    recent_train_losses: tuple[float, ...] = attrs.field(default=(), converter=_floats)
    """The last steps' training losses (the trainer gives up to 64, across epochs), oldest first."""

    def layer(self, name: str) -> LayerTelemetry:
        """The telemetry of layer `name` (KeyError if absent)."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict, for `AdaptationDecided.telemetry`."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "train_loss_history": [_finite(x) for x in self.train_loss_history],
            "val_loss_history": [_finite(x) for x in self.val_loss_history],
            "val_accuracy_history": [_finite(x) for x in self.val_accuracy_history],
            "last_decision_step": self.last_decision_step,
            "decisions_this_epoch": self.decisions_this_epoch,
            "layers": [layer.to_dict() for layer in self.layers],
            "recent_train_losses": [_finite(x) for x in self.recent_train_losses],
        }

    def digest(self) -> str:
        """`sha256:` digest of `to_dict()`'s canonical JSON."""
        return telemetry_digest(self.to_dict())

    def stats(self) -> dict[str, SeedStats]:
        """Per-seed performance, in the form the orchestrator's strategies rank by."""
        return {
            s.seed: SeedStats(
                seed=s.seed,
                contribution=_finite(s.contribution),
                improvement=_finite(s.improvement),
            )
            for layer in self.layers
            for s in layer.seeds
        }


def _finite(x: float | None) -> float | None:
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


@runtime_checkable
class Controller(Protocol):
    """Turns telemetry into adaptation decisions; a pure function of the telemetry."""

    def decide(self, telemetry: Telemetry) -> list[AdaptationDecision]:
        """The decisions for this boundary (often none)."""
        ...


_NN = [v.instance_of(int), v.ge(0)]
_POS = [v.instance_of(int), v.ge(1)]


@attrs.frozen(slots=True)
class ControllerConfig:
    """Thresholds of the heuristic controller (the run config's `[controller]` section)."""

    kind: str = attrs.field(default="heuristic", validator=v.in_(("heuristic", "learned")))
    """`heuristic` (the rules below) or `learned` (esper_es.policy: the rules say when, a
    policy fitted on the library's outcomes says what; docs/controller.md)."""
    learned: LearnedConfig = attrs.field(factory=LearnedConfig)
    """The learned controller's prior, noise and reward (`[controller.learned]`)."""
    enabled: bool = attrs.field(default=True, validator=v.instance_of(bool))
    """False: the controller never decides (seeds change only by user decisions)."""
    cooldown_steps: int = attrs.field(default=30, validator=_NN)
    """Steps after a decision during which no new decision is made."""
    max_adaptations_per_epoch: int = attrs.field(default=2, validator=_NN)
    """At most this many decisions per epoch."""
    warmup_steps: int = attrs.field(default=0, validator=_NN)
    """No decision before this step."""
    plateau_window: int = attrs.field(default=2, validator=_POS)
    """Validation losses compared: the latest against the one `plateau_window` entries before."""
    plateau_threshold: float = attrs.field(default=0.1, validator=v.instance_of(float))
    """A relative improvement of validation loss below this over the window is a plateau."""
    plateau_steps: int = attrs.field(default=15, validator=_NN)
    """Within an epoch: the mean training loss of the last this many steps against the mean
    of the this many before; a relative improvement below `plateau_threshold` is a plateau too
    (0: only the validation rule)."""
    seeds_per_adaptation: int = attrs.field(default=1, validator=_POS)
    """Seeds an `add_seed` decision germinates (its `num_seeds`)."""
    underperform_contribution: float = attrs.field(default=0.0, validator=v.instance_of(float))
    """A measured contribution below this marks a seed as underperforming (REPLACE)."""
    max_grad_norm_ratio: float = attrs.field(default=10.0, validator=v.gt(0.0))
    """A seed's gradient-norm ratio above this (or non-finite) is unhealthy (REPLACE)."""
    specialize_spread: float = attrs.field(default=0.01, validator=v.ge(0.0))
    """A measured active seed this far below the layer's best measured kernel (active or
    fossilized) is specialised away (0: never)."""
    ensemble_similarity: float = attrs.field(default=0.01, validator=v.ge(0.0))
    """On a plateau, a layer whose kernel-holding seeds all contribute (> 0) within this of
    each other is grown by ENSEMBLE (every dormant slot) rather than DIVERSIFY."""
    ensemble: bool = attrs.field(default=False, validator=v.instance_of(bool))
    """True: on a plateau, fill every dormant slot with equal blend targets (ENSEMBLE)."""
    record_outcomes: bool = attrs.field(default=True, validator=v.instance_of(bool))
    """Record `DecisionOutcomeMeasured` for each decision once its changes resolved
    (`esper_es.core.outcomes`)."""


class HeuristicController:
    """The built-in controller: plateaus, seed health and contributions, with cooldown and caps.

    Nothing is decided while `enabled` is false, before `warmup_steps`, within `cooldown_steps`
    of `last_decision_step`, or once `decisions_this_epoch` reached `max_adaptations_per_epoch`
    (the remaining budget caps how many decisions one call returns). Otherwise, per layer in
    telemetry order, the first rule that matches gives that layer's decision:

    1. **Gradient health**: an active seed whose gradient-norm ratio exceeds
       `max_grad_norm_ratio` (or is not finite) → `optimize_parameters` (REPLACE) of those seeds.
    2. **Underperforming**: an active seed with measured contribution below
       `underperform_contribution`, while another fitting blueprint kind exists →
       `optimize_parameters` (REPLACE): its kernel is swapped in its own slot.
    3. **Uneven contributions**: a measured active seed at least `specialize_spread` below
       the layer's best measured kernel (active or fossilized), which pays (> 0) →
       `remove_seed` (SPECIALIZE) naming exactly those weak seeds: they are culled, the best
       remaining active seed's blend target raised to 1; unmeasured seeds are left alone.
    4. **Plateau** (at most one layer per call, the first with dormant slots): the validation
       loss improved by less than `plateau_threshold` (relative) over the last
       `plateau_window` evaluations, or, within the epoch, the mean training loss of the last
       `plateau_steps` steps improved by less than that on the `plateau_steps` before →
       - `modify_architecture` (ENSEMBLE) when every kernel-holding seed of the layer pays
         (measured contribution > 0, all within `ensemble_similarity` of each other), or when
         `ensemble` is set: fill the dormant slots;
       - else `add_seed` (DIVERSIFY, `seeds_per_adaptation` seeds of kinds not active there).
    """

    def __init__(self, config: ControllerConfig | None = None) -> None:
        self.config = config or ControllerConfig()

    def decide(self, telemetry: Telemetry) -> list[AdaptationDecision]:
        """The decisions for this boundary, per the rules above."""
        cfg, t = self.config, telemetry
        if not cfg.enabled or t.step < cfg.warmup_steps:
            return []
        if t.last_decision_step is not None and t.step - t.last_decision_step < cfg.cooldown_steps:
            return []
        budget = cfg.max_adaptations_per_epoch - t.decisions_this_epoch
        if budget <= 0:
            return []
        digest = t.digest()
        out: list[AdaptationDecision] = []
        decided: set[str] = set()
        for layer in t.layers:
            made = self._layer_rule(layer, digest)
            if made is not None:
                out.append(made)
                decided.add(layer.name)
        why = self.plateau_reason(t)
        if why is not None:
            for layer in t.layers:
                free = layer.dormant()
                if layer.name in decided or not free:
                    continue
                out.append(self._grow(layer, why, digest))
                break
        return out[:budget]

    def _grow(self, layer: LayerTelemetry, why: str, digest: str) -> AdaptationDecision:
        cfg = self.config
        free = layer.dormant()
        held = [s for s in layer.seeds if s.holds_kernel]
        paying = _paying(held, cfg.ensemble_similarity)
        if cfg.ensemble or paying is not None:
            because = "ensemble = true" if paying is None else paying
            return _decision(
                layer,
                "modify_architecture",
                {"target": 1.0},
                f"{why}; {because}: fill {len(free)} dormant slot(s) of {layer.name}",
                digest,
            )
        n = min(cfg.seeds_per_adaptation, len(free))
        return _decision(
            layer,
            "add_seed",
            {"num_seeds": n},
            f"{why}; {len(free)} dormant slot(s) in {layer.name}",
            digest,
        )

    def plateau(self, t: Telemetry) -> tuple[float, float, float] | None:
        """(relative improvement, reference loss, latest loss) if validation loss plateaued."""
        w = self.config.plateau_window
        return _flat(t.val_loss_history[-w - 1 :: w] if len(t.val_loss_history) > w else (),
                     self.config.plateau_threshold)  # fmt: skip

    def step_plateau(self, t: Telemetry) -> tuple[float, float, float] | None:
        """(relative improvement, earlier mean, latest mean) of training loss within the epoch."""
        w = self.config.plateau_steps
        losses = t.recent_train_losses
        if w <= 0 or len(losses) < 2 * w:
            return None
        earlier = sum(losses[-2 * w : -w]) / w
        latest = sum(losses[-w:]) / w
        return _flat((earlier, latest), self.config.plateau_threshold)

    def plateau_reason(self, t: Telemetry) -> str | None:
        """Why the host counts as plateaued now (the numbers read), or None."""
        cfg = self.config
        found = self.plateau(t)
        if found is not None:
            rel, ref, cur = found
            return (
                f"validation loss plateaued: {ref:.4g} -> {cur:.4g} over the last "
                f"{cfg.plateau_window} evaluations ({rel:+.2%} < {cfg.plateau_threshold:.2%})"
            )
        found = self.step_plateau(t)
        if found is not None:
            rel, ref, cur = found
            return (
                f"training loss plateaued at step {t.step}: mean {ref:.4g} -> "
                f"{cur:.4g} over the last 2 x {cfg.plateau_steps} steps "
                f"({rel:+.2%} < {cfg.plateau_threshold:.2%})"
            )
        return None

    def _layer_rule(self, layer: LayerTelemetry, digest: str) -> AdaptationDecision | None:
        cfg = self.config
        active = layer.active()
        sick = [
            s
            for s in active
            if s.grad_norm_ratio is not None
            and not (
                math.isfinite(s.grad_norm_ratio) and s.grad_norm_ratio <= cfg.max_grad_norm_ratio
            )
        ]
        if sick:
            listed = ", ".join(f"{s.seed} ratio {s.grad_norm_ratio:.3g}" for s in sick)
            return _decision(
                layer,
                "optimize_parameters",
                {"num_replace": len(sick), "seeds": [s.seed for s in sick]},
                f"unhealthy gradients ({listed} > {cfg.max_grad_norm_ratio:g})",
                digest,
            )
        weak = [
            s
            for s in active
            if s.contribution is not None
            and math.isfinite(s.contribution)
            and s.contribution < cfg.underperform_contribution
            and any(b != s.blueprint for b in layer.blueprints)
        ]
        if weak:
            listed = ", ".join(f"{s.seed} {s.contribution:+.4g}" for s in weak)
            return _decision(
                layer,
                "optimize_parameters",
                {"num_replace": len(weak), "seeds": [s.seed for s in weak]},
                f"underperforming seeds (contribution {listed} < "
                f"{cfg.underperform_contribution:g}) and other blueprints fit: swap their "
                "kernels in their own slots",
                digest,
            )
        return self._specialize(layer, active, digest)

    def _specialize(
        self, layer: LayerTelemetry, active: tuple[SeedTelemetryView, ...], digest: str
    ) -> AdaptationDecision | None:
        """Rule 3: cull the measured active seeds far below the layer's best measured kernel.

        The best may be fossilized: a layer's seeds mostly pass EVALUATING to FOSSILIZED one
        at a time, so a kept kernel is what a newly measured one is usually weighed against.
        """
        cfg = self.config
        if cfg.specialize_spread <= 0.0:
            return None
        measured = [s for s in active if _measured(s)]
        kept = [s for s in layer.seeds if s.stage == _FOSSILIZED and _measured(s)]
        pool = measured + kept
        if not measured or len(pool) < 2:
            return None
        hi = max(float(s.contribution or 0.0) for s in pool)
        lo = min(float(s.contribution or 0.0) for s in measured)
        weak = [s for s in measured if hi - float(s.contribution or 0.0) >= cfg.specialize_spread]
        if hi <= 0.0 or not weak:
            return None
        best = [s for s in pool if s not in weak]
        listed = ", ".join(f"{s.seed} {s.contribution:+.4g} ({s.stage})" for s in pool)
        return _decision(
            layer,
            "remove_seed",
            {"seeds": [s.seed for s in weak], "keep": max(1, len(best) - len(kept))},
            f"contributions in {layer.name} are uneven ({listed}: spread {hi - lo:.4g} >= "
            f"{cfg.specialize_spread:g}); keep {', '.join(s.seed for s in best)}, cull "
            f"{', '.join(s.seed for s in weak)}",
            digest,
        )


def _measured(s: SeedTelemetryView) -> bool:
    return s.contribution is not None and math.isfinite(s.contribution)


def _flat(pair: Any, threshold: float) -> tuple[float, float, float] | None:
    """(relative improvement, ref, cur) when `pair` = (ref, cur) improved by < `threshold`."""
    if len(pair) != 2:
        return None
    ref, cur = float(pair[0]), float(pair[1])
    if not (math.isfinite(ref) and math.isfinite(cur)) or ref == 0.0:
        return None
    rel = (ref - cur) / abs(ref)
    return (rel, ref, cur) if rel < threshold else None


def _paying(held: list[SeedTelemetryView], similarity: float) -> str | None:
    """Why every kernel-holding seed pays (all measured > 0, within `similarity`), or None."""
    values = [s.contribution for s in held]
    if not held or any(c is None or not math.isfinite(c) or c <= 0.0 for c in values):
        return None
    nums = [float(c or 0.0) for c in values]
    if max(nums) - min(nums) > similarity:
        return None
    listed = ", ".join(f"{s.seed} {s.contribution:+.4g}" for s in held)
    return f"every seed holding a kernel pays ({listed})"


def _decision(
    layer: LayerTelemetry,
    kind: str,
    parameters: Mapping[str, Any],
    reason: str,
    digest: str,
) -> AdaptationDecision:
    AdaptationType(kind)  # a typo here is a bug, not a decision
    return AdaptationDecision(
        layer_name=layer.name,
        adaptation_type=kind,
        parameters=dict(parameters),
        reason=reason,
        telemetry_digest=digest,
    )
