"""The learned controller's knobs: the run config's `[controller.learned]` table."""

from __future__ import annotations

import attrs
from attrs import validators as v


@attrs.frozen(slots=True)
class LearnedConfig:
    """Prior, noise and reward of the learned controller (docs/controller.md)."""

    prior_scale: float = attrs.field(default=0.02, validator=v.gt(0.0))
    """Prior standard deviation of every feature weight (contribution units)."""
    noise: float = attrs.field(default=0.01, validator=v.gt(0.0))
    """Standard deviation of one kernel's outcome around the model's prediction."""
    fossil_bonus: float = attrs.field(default=0.02, validator=v.ge(0.0))
    """Added to a fossilized kernel's contribution: a kernel kept for good is what growth is for."""
