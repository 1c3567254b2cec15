"""Alpha schedules: how a grafting seed's blend factor ramps towards its target.

Pure Python on purpose: alpha at any seq must follow from the log alone, so replay never
depends on torch. Each schedule maps (steps since grafting started, ramp steps, target) to
alpha in [0, target]; it is monotone in the step, exactly 0 at step 0 (when ramp_steps > 0),
exactly `target` from `ramp_steps` on, and holds there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Final

import attrs
from attrs import validators as v

#: Steepness of the sigmoid ramp: the logistic over [-K/2, K/2], rescaled to [0, 1].
SIGMOID_STEEPNESS: Final = 10.0


def _linear_fraction(u: float) -> float:
    return u


def _cosine_fraction(u: float) -> float:
    return 0.5 * (1.0 - math.cos(math.pi * u))


def _logistic(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


_SIG_LO: Final = _logistic(-SIGMOID_STEEPNESS / 2)
_SIG_HI: Final = _logistic(SIGMOID_STEEPNESS / 2)


def _sigmoid_fraction(u: float) -> float:
    # Rescaled so that the ramp starts at exactly 0 and ends at exactly 1, like the others.
    return (_logistic(SIGMOID_STEEPNESS * (u - 0.5)) - _SIG_LO) / (_SIG_HI - _SIG_LO)


_FRACTIONS: Final[Mapping[str, Callable[[float], float]]] = {
    "linear": _linear_fraction,
    "cosine": _cosine_fraction,
    "sigmoid": _sigmoid_fraction,
}

#: The schedule kinds, in a stable order.
BLEND_KINDS: Final = tuple(_FRACTIONS)


def blend_alpha(kind: str, steps: int, ramp_steps: int, target: float) -> float:
    """Alpha after `steps` steps of grafting under schedule `kind`, in [0, target]."""
    fraction = _FRACTIONS.get(kind)
    if fraction is None:
        raise ValueError(f"unknown blend schedule {kind!r}; known: {', '.join(BLEND_KINDS)}")
    if not (math.isfinite(target) and 0.0 <= target <= 1.0):
        raise ValueError(f"blend target {target!r} is outside [0, 1]")
    if ramp_steps < 0:
        raise ValueError(f"ramp_steps {ramp_steps} is negative")
    # Endpoints are returned exactly rather than computed, so `stabilize` (alpha == target)
    # is reachable for every schedule and every target.
    if steps >= ramp_steps:
        return target
    if steps <= 0:
        return 0.0
    f = fraction(steps / ramp_steps)
    # The clamp only absorbs last-ulp rounding of cos/exp; it keeps the bounds exact.
    return target * min(1.0, max(0.0, f))


def linear_alpha(steps: int, ramp_steps: int, target: float) -> float:
    """Linear ramp from 0 to `target` over `ramp_steps` steps."""
    return blend_alpha("linear", steps, ramp_steps, target)


def cosine_alpha(steps: int, ramp_steps: int, target: float) -> float:
    """Half-cosine ramp: slow start, fast middle, slow finish."""
    return blend_alpha("cosine", steps, ramp_steps, target)


def sigmoid_alpha(steps: int, ramp_steps: int, target: float) -> float:
    """Logistic ramp rescaled to start at 0 and end at `target`."""
    return blend_alpha("sigmoid", steps, ramp_steps, target)


def _check_kind(_: object, __: attrs.Attribute[str], kind: str) -> None:
    if kind not in _FRACTIONS:
        raise ValueError(f"unknown blend schedule {kind!r}; known: {', '.join(BLEND_KINDS)}")


@attrs.frozen(slots=True)
class BlendSchedule:
    """A named alpha ramp of `ramp_steps` steps."""

    kind: str = attrs.field(default="linear", validator=_check_kind)
    ramp_steps: int = attrs.field(default=20, validator=[v.instance_of(int), v.ge(0)])

    def alpha(self, steps: int, target: float) -> float:
        """Alpha `steps` steps after grafting started, ramping towards `target`."""
        return blend_alpha(self.kind, steps, self.ramp_steps, target)

    def done(self, steps: int) -> bool:
        """Whether the ramp has reached its target after `steps` steps."""
        return steps >= self.ramp_steps
