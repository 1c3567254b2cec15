"""Lifecycle gate thresholds (SPEC §2): the part of the run config the pure core reads."""

from __future__ import annotations

import attrs
from attrs import validators as v


@attrs.frozen(slots=True)
class LifecycleConfig:
    """Thresholds of the lifecycle gates, all taken from the run config."""

    min_training_steps: int = attrs.field(default=20, validator=[v.instance_of(int), v.ge(0)])
    """Steps a seed must spend in TRAINING before `start_grafting`."""
    min_improvement: float = attrs.field(default=0.0, validator=v.instance_of(float))
    """The seed's own training loss must have improved by more than this (relative)."""
    min_stabilization_steps: int = attrs.field(default=10, validator=[v.instance_of(int), v.ge(0)])
    """Steps a seed must spend in STABILIZATION before `evaluate`."""
    contribution_threshold: float = attrs.field(default=-0.002, validator=v.instance_of(float))
    """Counterfactual contribution needed for `fine_tune` and `fossilize`."""
    max_instability: float = attrs.field(default=3.0, validator=[v.instance_of(float), v.ge(0.0)])
    """Largest instability (e.g. relative loss spread) tolerated at `fossilize`."""
    embargo_steps: int = attrs.field(default=50, validator=[v.instance_of(int), v.ge(0)])
    """Steps a slot stays EMBARGOED before it may be released."""
    default_blend_target: float = attrs.field(
        default=1.0, validator=[v.instance_of(float), v.ge(0.0), v.le(1.0)]
    )
    """Blend target given to a germinated seed when its command names none."""
