"""The lifecycle driver: turns seed telemetry into lifecycle commands at each step boundary.

It keeps no state of its own: what it issues at a boundary is a function of the step, the
seeds' folded states (stage, entered step, alpha, blend target, embargo) and what a
`SeedProbe` measures, so given the same telemetry it issues the same commands, and a resumed
run needs nothing from it but the log. Seeds are visited in id order.

Per stage (thresholds from `[lifecycle]`, knobs from `[driver]` and `[blending]`):

- GERMINATED: `start_training`.
- TRAINING: once `min_training_steps` have passed, `start_grafting` with the seed's measured
  improvement if it beats `min_improvement`; if it still has not after `training_patience`
  more steps, `cull`. A seed whose own loss (the loss with it at full weight) is still at
  least `diverged_ratio` times the loss without it is culled at the first of those
  boundaries instead: its kernel diverged or never learned (measured on a width-64 host:
  own losses of 3 to 10^4 times the host's), and each step it keeps training is a forward
  and backward pass spent on nothing.
- GRAFTING: `adjust_blend` to `BlendSchedule.alpha(steps since grafting began, target)` when
  that differs from the seed's alpha, so alpha at any seq follows from the log; once the ramp
  is done, `stabilize` in the same boundary.
- STABILIZATION: `evaluate` after `min_stabilization_steps`.
- EVALUATING: after `evaluation_steps`, measure the counterfactual contribution: `fine_tune`
  if it reaches `contribution_threshold`, else `cull`.
- FINE_TUNING: after `fine_tune_steps`, re-measure: `fossilize` (with the instability) if the
  contribution still reaches the threshold and the instability is at most `max_instability`,
  else `cull` naming which failed.
- CULLED, CANCELLED, ROLLED_BACK: `embargo`. EMBARGOED: `release` once the embargo elapsed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import attrs

from esper_es.core import commands as c
from esper_es.core.blending import BlendSchedule
from esper_es.core.config import LifecycleConfig
from esper_es.core.lifecycle import Stage
from esper_es.core.state import SeedState


class SeedProbe(Protocol):
    """What the driver measures; the trainer's probe reads the live model, tests craft numbers."""

    def improvement(self, seed: str) -> float:
        """The seed's training signal: (loss without it - loss with it at full weight) ÷ loss
        without it, EMAs over its TRAINING (`nn.telemetry.SeedSignal.advantage`)."""
        ...

    def contribution(self, seed: str) -> float:
        """Counterfactual contribution: metric with the seed at its alpha minus without it."""
        ...

    def instability(self, seed: str) -> float:
        """Relative spread of recent training losses (0 = perfectly steady)."""
        ...


@attrs.frozen
class DriverSettings:
    """The thresholds and knobs the driver reads."""

    lifecycle: LifecycleConfig = attrs.field(factory=LifecycleConfig)
    schedule: BlendSchedule = attrs.field(factory=BlendSchedule)
    training_patience: int = 40
    diverged_ratio: float = 0.0
    evaluation_steps: int = 5
    fine_tune_steps: int = 30


#: Stages whose seed has had its current kernel's contribution measured.
_MEASURED_STAGES = frozenset({Stage.EVALUATING, Stage.FINE_TUNING, Stage.FOSSILIZED})


class LifecycleDriver:
    """Issues each boundary's lifecycle commands (see the module doc for the rules)."""

    def __init__(self, settings: DriverSettings, new_id: Callable[[], str]) -> None:
        self.settings = settings
        self.new_id = new_id
        #: The last contribution measured per seed, for the orchestrator's stats.
        self.contributions: dict[str, float] = {}

    def commands(
        self, step: int, seeds: Iterable[SeedState], probe: SeedProbe
    ) -> list[c.SeedCommand]:
        """The lifecycle commands for the boundary at `step`, in seed id order."""
        out: list[c.SeedCommand] = []
        for seed in sorted(seeds, key=lambda s: s.seed):
            if seed.stage not in _MEASURED_STAGES:
                # A measurement belongs to the kernel it was taken of: once that kernel is
                # gone (culled, rolled back, or a new one germinated) it must not be reported.
                self.contributions.pop(seed.seed, None)
            out.extend(self._for_seed(step, seed, probe))
        return out

    def _for_seed(self, step: int, s: SeedState, probe: SeedProbe) -> list[c.SeedCommand]:
        cfg, life = self.settings, self.settings.lifecycle
        base: dict[str, Any] = {"seed": s.seed, "step": step}
        in_stage = step - s.entered_step
        stage = s.stage
        if stage is Stage.GERMINATED:
            return [c.StartTraining(command_id=self.new_id(), **base)]
        if stage is Stage.TRAINING:
            if in_stage < life.min_training_steps:
                return []
            gain = probe.improvement(s.seed)
            if gain > life.min_improvement:
                return [c.StartGrafting(command_id=self.new_id(), improvement=gain, **base)]
            # 1 - improvement is the seed's own loss ÷ the loss without it (`SeedProbe`).
            if cfg.diverged_ratio > 0 and 1.0 - gain >= cfg.diverged_ratio:
                reason = (
                    f"diverged: its own loss is {1.0 - gain:.4g}x the loss without it after "
                    f"{in_stage} steps in TRAINING (limit {cfg.diverged_ratio:.4g}x)"
                )
                return [c.CullSeed(command_id=self.new_id(), reason=reason, **base)]
            if in_stage >= life.min_training_steps + cfg.training_patience:
                reason = (
                    f"training signal improved by {gain:.4g} after {in_stage} steps in TRAINING "
                    f"(needs > {life.min_improvement:.4g})"
                )
                return [c.CullSeed(command_id=self.new_id(), reason=reason, **base)]
            return []
        if stage is Stage.GRAFTING:
            alpha = cfg.schedule.alpha(in_stage, s.blend_target)
            out: list[c.SeedCommand] = []
            if alpha != s.alpha:
                out.append(c.AdjustBlend(command_id=self.new_id(), alpha=alpha, **base))
            if cfg.schedule.done(in_stage):
                out.append(c.Stabilize(command_id=self.new_id(), **base))
            return out
        if stage is Stage.STABILIZATION:
            if in_stage >= life.min_stabilization_steps:
                return [c.StartEvaluation(command_id=self.new_id(), **base)]
            return []
        if stage is Stage.EVALUATING:
            if in_stage < cfg.evaluation_steps:
                return []
            contribution = self._measure(s.seed, probe)
            if contribution >= life.contribution_threshold:
                return [
                    c.StartFineTuning(command_id=self.new_id(), contribution=contribution, **base)
                ]
            reason = (
                f"contribution {contribution:.4g} below the threshold "
                f"{life.contribution_threshold:.4g}"
            )
            return [c.CullSeed(command_id=self.new_id(), reason=reason, **base)]
        if stage is Stage.FINE_TUNING:
            if in_stage < cfg.fine_tune_steps:
                return []
            contribution = self._measure(s.seed, probe)
            instability = probe.instability(s.seed)
            if contribution < life.contribution_threshold:
                reason = (
                    f"contribution {contribution:.4g} fell below the threshold "
                    f"{life.contribution_threshold:.4g} while fine-tuning"
                )
            elif instability > life.max_instability:
                reason = f"instability {instability:.4g} exceeds {life.max_instability:.4g}"
            else:
                return [
                    c.FossilizeSeed(
                        command_id=self.new_id(),
                        contribution=contribution,
                        instability=instability,
                        **base,
                    )
                ]
            return [c.CullSeed(command_id=self.new_id(), reason=reason, **base)]
        if stage in (Stage.CULLED, Stage.CANCELLED, Stage.ROLLED_BACK):
            return [c.EmbargoSeed(command_id=self.new_id(), **base)]
        if stage is Stage.EMBARGOED:
            if s.embargo_until is not None and step >= s.embargo_until:
                return [c.ReleaseSeed(command_id=self.new_id(), **base)]
            return []
        return []  # DORMANT waits for a decision; FOSSILIZED is terminal

    def _measure(self, seed: str, probe: SeedProbe) -> float:
        value = float(probe.contribution(seed))
        self.contributions[seed] = value
        return value


def relative_spread(values: Iterable[float]) -> float:
    """Standard deviation ÷ |mean| of `values` (0 for fewer than two or a zero mean)."""
    xs = list(values)
    if len(xs) < 2:
        return 0.0
    mean = sum(xs) / len(xs)
    if mean == 0:
        return 0.0
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return float(var**0.5 / abs(mean))


def seeds_in(states: Mapping[str, SeedState], layer_seeds: Iterable[str]) -> list[SeedState]:
    """The live states of `layer_seeds` (DORMANT where a seed has no events yet)."""
    return [states.get(s) or SeedState.dormant(s) for s in layer_seeds]
