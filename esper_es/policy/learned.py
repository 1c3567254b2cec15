"""The learned controller (`[controller] kind = "learned"`): the heuristic says when, a policy what.

`decide(telemetry)` first asks the heuristic controller of the same `[controller]` thresholds
(cooldown, per-epoch cap, plateau, seed health). Its decisions are the triggers:

- a growth decision (`add_seed`, `add_neurons`) is replaced by the
  policy's choice among every candidate action `(strategy, layer, blueprint)` of the layers no
  other rule decided for this call: DIVERSIFY or ENSEMBLE into a layer with a dormant slot
  (DIVERSIFY: a kind not active there), REPLACE of a layer's weakest measured active seed by
  another kind (only where a dormant slot can take the replacement);
- a REPLACE the rules made (unhealthy or underperforming seeds) keeps its seeds; the policy
  chooses the replacement's blueprint;
- a SPECIALIZE or an ENSEMBLE (`modify_architecture`) is kept as the rules made it.

The policy: Thompson sampling from a Bayesian linear regression of a kernel's outcome on the
action's features (`esper_es.core.bandit`, `esper_es.policy.features`), fitted on the library
when the run started and recorded then (`PolicyFitted`). At each boundary where it chooses,
one weight vector θ is drawn with a seed derived from the master seed and the step, every
candidate is scored `features · θ`, and the best is taken (ties: the first in `(strategy,
layer, blueprint)` order). So `decide` stays a function of the telemetry, given the run's
recorded posterior and master seed. What it read and drew is returned by `take_facts` as one
`PolicySampled`, which the trainer records in the same boundary, before the decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from esper_es.controller import ControllerConfig, HeuristicController, LayerTelemetry, Telemetry
from esper_es.core import events as ev
from esper_es.core.bandit import Posterior, fit, sample
from esper_es.core.decisions import AdaptationDecision
from esper_es.core.ids import derive_seed
from esper_es.policy.features import action_features, context_of, feature_names
from esper_es.policy.fitting import posterior_digest

# The heuristic grows on a plateau by DIVERSIFY, or by ENSEMBLE when every seed there pays:
# either is a trigger whose "what" the policy chooses.
_GROWTH = frozenset({"add_seed", "add_neurons", "modify_architecture"})


@attrs.frozen
class Candidate:
    """One action the policy may take, with the features it reads and its sampled score."""

    strategy: str
    layer: str
    blueprint: str
    features: dict[str, float]
    score: float
    victim: str | None = None
    """REPLACE: the seed replaced."""

    def to_dict(self) -> dict[str, Any]:
        """The entry of `PolicySampled.candidates`."""
        return {
            "strategy": self.strategy,
            "layer": self.layer,
            "blueprint": self.blueprint,
            "features": dict(sorted(self.features.items())),
            "score": self.score,
        }


class LearnedController:
    """Heuristic triggers, Thompson-sampled actions (module docstring)."""

    def __init__(
        self,
        config: ControllerConfig,
        master_seed: int,
        source: Callable[[], ev.PolicyFitted | None] | None = None,
    ) -> None:
        self.config = config
        self.heuristic = HeuristicController(config)
        self.master_seed = int(master_seed)
        #: Where the run's `PolicyFitted` is read from (the trainer's log; `fitting.bind`).
        self.source = source
        self._policy: tuple[Posterior, str] | None = None
        self._facts: list[ev.Event] = []

    def forget(self) -> None:
        """Drop the cached posterior (the controller was pointed at another log)."""
        self._policy = None

    def take_facts(self) -> list[ev.Event]:
        """The `PolicySampled` of the last `decide` (once), for the trainer to record."""
        facts, self._facts = self._facts, []
        return facts

    def policy(self, telemetry: Telemetry) -> tuple[Posterior, str]:
        """The run's posterior and its digest (the prior alone if no `PolicyFitted` exists)."""
        if self._policy is None:
            fitted = self.source() if self.source is not None else None
            if fitted is not None:
                posterior = Posterior.from_dict(fitted.posterior)
            else:
                layers = [(layer.name, layer.blueprints) for layer in telemetry.layers]
                learned = self.config.learned
                posterior = fit(
                    feature_names(layers), [], prior_scale=learned.prior_scale, noise=learned.noise
                )
            self._policy = (posterior, posterior_digest(posterior))
        return self._policy

    def decide(self, telemetry: Telemetry) -> list[AdaptationDecision]:
        """The heuristic's triggers, with the policy's choice of what (module docstring)."""
        self._facts = []
        base = self.heuristic.decide(telemetry)
        if not any(_chooses(d) for d in base):
            return base
        posterior, digest = self.policy(telemetry)
        seed = derive_seed(self.master_seed, "learned_controller", telemetry.step)
        theta = sample(posterior, seed)
        raw = telemetry.to_dict()
        fixed = {d.layer_name for d in base if not _chooses(d)}
        fixed |= {d.layer_name for d in base if d.adaptation_type == "optimize_parameters"}
        candidates: list[Candidate] = []
        chosen: list[int] = []
        out: list[AdaptationDecision] = []
        for d in base:
            if not _chooses(d):
                out.append(d)
                continue
            if d.adaptation_type == "optimize_parameters":
                layer = telemetry.layer(d.layer_name)
                victims = [str(s) for s in d.parameters.get("seeds", [])]
                options = _replacements(layer, victims, raw, posterior, theta)
            else:
                options = [
                    c
                    for layer in telemetry.layers
                    if layer.name not in fixed
                    for c in _growth(layer, raw, posterior, theta)
                ]
            if not options:
                out.append(d)
                continue
            best = max(range(len(options)), key=lambda i: (options[i].score, -i))
            chosen.append(len(candidates) + best)
            candidates += options
            out.append(_decision(d, options[best], len(options), posterior, digest, telemetry))
            fixed.add(options[best].layer)
        self._facts = [
            ev.PolicySampled(
                step=telemetry.step,
                posterior_digest=digest,
                draw_seed=seed,
                theta=list(theta),
                candidates=[c.to_dict() for c in candidates],
                chosen=chosen,
            )
        ]
        return out


def _chooses(d: AdaptationDecision) -> bool:
    """Whether the policy chooses what `d` does (growth, or a REPLACE's blueprint)."""
    return d.adaptation_type in _GROWTH or d.adaptation_type == "optimize_parameters"


def _scored(
    strategy: str,
    layer: LayerTelemetry,
    blueprint: str,
    raw: Mapping[str, Any],
    posterior: Posterior,
    theta: Sequence[float],
    victim: str | None = None,
) -> Candidate:
    features = action_features(context_of(raw, layer.name), strategy, layer.name, blueprint)
    return Candidate(
        strategy, layer.name, blueprint, features, posterior.predict(features, theta), victim
    )


def _growth(
    layer: LayerTelemetry, raw: Mapping[str, Any], posterior: Posterior, theta: Sequence[float]
) -> list[Candidate]:
    if not layer.dormant():
        return []
    active = layer.active()
    kinds = {s.blueprint for s in active}
    out = [
        _scored("diversify", layer, b, raw, posterior, theta)
        for b in sorted(layer.blueprints)
        if b not in kinds
    ]
    if active:
        names = sorted(layer.blueprints)
        out += [_scored("ensemble", layer, b, raw, posterior, theta) for b in names]
    measured = [s for s in active if s.contribution is not None]
    if measured:
        weakest = min(measured, key=lambda s: (float(s.contribution or 0.0), s.seed))
        out += _replacements(layer, [weakest.seed], raw, posterior, theta)
    return out


def _replacements(
    layer: LayerTelemetry,
    victims: Sequence[str],
    raw: Mapping[str, Any],
    posterior: Posterior,
    theta: Sequence[float],
) -> list[Candidate]:
    held = {s.seed: s.blueprint for s in layer.seeds}
    removed = {held.get(v) for v in victims}
    victim = victims[0] if len(victims) == 1 else None
    return [
        _scored("replace", layer, b, raw, posterior, theta, victim)
        for b in sorted(layer.blueprints)
        if b not in removed
    ]


def _decision(
    trigger: AdaptationDecision,
    c: Candidate,
    among: int,
    posterior: Posterior,
    digest: str,
    telemetry: Telemetry,
) -> AdaptationDecision:
    why = (
        f"learned policy: {c.strategy} {c.blueprint} in {c.layer}, sampled score {c.score:+.4g} "
        f"(best of {among}; posterior {digest[:15]}… fitted on {posterior.n} outcomes); "
        f"trigger: {trigger.reason}"
    )
    if c.strategy == "diversify":
        kind, params = "add_seed", {"num_seeds": 1, "blueprint": c.blueprint}
    elif c.strategy == "ensemble":
        kind, params = "modify_architecture", {"blueprints": [c.blueprint]}
    elif trigger.adaptation_type == "optimize_parameters" and trigger.layer_name == c.layer:
        kind, params = "optimize_parameters", {**trigger.parameters, "blueprint": c.blueprint}
    else:
        kind = "optimize_parameters"
        params = {"num_replace": 1, "seeds": [c.victim], "blueprint": c.blueprint}
    return AdaptationDecision(
        layer_name=c.layer,
        adaptation_type=kind,
        parameters=params,
        reason=why,
        telemetry_digest=telemetry.digest(),
    )


def controller_for(config: ControllerConfig, master_seed: int) -> Any:
    """The controller `[controller] kind` names: `HeuristicController` or `LearnedController`."""
    if config.kind == "learned":
        return LearnedController(config, master_seed)
    return HeuristicController(config)
