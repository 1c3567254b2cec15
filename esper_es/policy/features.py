"""What the learned controller reads: a context per layer, and features per candidate action.

A candidate action is `(strategy, layer, blueprint)`: germinate one kernel of `blueprint` in
`layer` by DIVERSIFY (a dormant slot), ENSEMBLE (a dormant slot, blend targets shared with
the layer's active seeds) or REPLACE (in place of the layer's weakest active seed). Its
context is read from the telemetry dict recorded with every decision (`AdaptationDecided
.telemetry`), so the same function computes it live, from a log, and for the library:

- `occupancy`: the share of the layer's slots holding a kernel;
- `plateau`: the relative improvement of validation loss over the last evaluation
  (clipped to [-1, 1]; 0 before there are two);
- `progress`: epochs trained / 10, at most 1.

Its features (a sparse dict, name -> value): `bias`; one-hots of the blueprint, the layer,
the strategy and the layer-and-blueprint pair; and each context value times each strategy
one-hot, so that the model can learn e.g. that REPLACE pays in a full layer and DIVERSIFY
early. `feature_names` lists the whole space of one run (its layers and their blueprints).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from esper_es.core.lifecycle import KERNEL_STAGES

STRATEGIES: Final = ("diversify", "ensemble", "replace")
CONTEXT: Final = ("occupancy", "plateau", "progress")
_KERNEL_STAGES: Final = frozenset(s.value for s in KERNEL_STAGES)


def _clip(x: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, x))


def context_of(telemetry: Mapping[str, Any], layer: str) -> dict[str, float]:
    """The context of `layer` in a telemetry dict (`Telemetry.to_dict()`)."""
    occupancy = 0.0
    for entry in telemetry.get("layers", []):
        if entry.get("name") == layer:
            n = int(entry.get("num_seeds") or 0)
            held = sum(1 for s in entry.get("seeds", []) if s.get("stage") in _KERNEL_STAGES)
            occupancy = held / n if n else 0.0
    losses = [x for x in telemetry.get("val_loss_history", []) if x is not None]
    plateau = 0.0
    if len(losses) >= 2 and losses[-2] != 0.0:
        plateau = _clip((losses[-2] - losses[-1]) / abs(losses[-2]), -1.0, 1.0)
    spe = int(telemetry.get("steps_per_epoch") or 0)
    progress = _clip(int(telemetry.get("step", 0)) / spe / 10.0, 0.0, 1.0) if spe else 0.0
    return {"occupancy": occupancy, "plateau": plateau, "progress": progress}


def action_features(
    context: Mapping[str, float], strategy: str, layer: str, blueprint: str
) -> dict[str, float]:
    """The features of one candidate action in `context` (module docstring)."""
    out = {
        "bias": 1.0,
        f"blueprint:{blueprint}": 1.0,
        f"layer:{layer}": 1.0,
        f"strategy:{strategy}": 1.0,
        f"layer:{layer}|blueprint:{blueprint}": 1.0,
    }
    for name in CONTEXT:
        value = float(context.get(name, 0.0))
        if value != 0.0:
            out[f"strategy:{strategy}*{name}"] = value
    return out


def feature_names(layers: Iterable[tuple[str, Sequence[str]]]) -> list[str]:
    """Every feature name of a run whose layers (name, fitting blueprints) are `layers`."""
    names = {"bias"}
    for layer, blueprints in layers:
        names.add(f"layer:{layer}")
        for b in blueprints:
            names.add(f"blueprint:{b}")
            names.add(f"layer:{layer}|blueprint:{b}")
    for s in STRATEGIES:
        names.add(f"strategy:{s}")
        names.update(f"strategy:{s}*{c}" for c in CONTEXT)
    return sorted(names)
