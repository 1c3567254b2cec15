"""Commands: requests to change a seed, a seed layer or the run. Each may be refused.

Every command carries its own id (events it causes get `causation_id` = this id and
deterministic event ids derived from it), an optional correlation id (the adaptation
decision it serves) and the training step at whose boundary it takes effect.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs


@attrs.frozen(slots=True, kw_only=True)
class Command:
    """Base of every command."""

    command_id: str
    step: int = 0
    correlation_id: str | None = None


@attrs.frozen(slots=True, kw_only=True)
class SeedCommand(Command):
    """A command addressed to one seed; `TRIGGER` names its lifecycle trigger."""

    TRIGGER: ClassVar[str]
    seed: str


@attrs.frozen(slots=True, kw_only=True)
class GerminateSeed(SeedCommand):
    """Load a kernel of `blueprint` into a dormant seed."""

    TRIGGER = "germinate"
    blueprint: str
    kernel_id: str
    init_seed: int
    blend_target: float | None = None
    config: dict[str, Any] = attrs.field(factory=dict)
    """The blueprint config to build the kernel with (`{}`: the blueprint's defaults)."""


@attrs.frozen(slots=True, kw_only=True)
class StartTraining(SeedCommand):
    """Start training a germinated seed in isolation."""

    TRIGGER = "start_training"


@attrs.frozen(slots=True, kw_only=True)
class CancelSeed(SeedCommand):
    """Abandon a germinated or training seed."""

    TRIGGER = "cancel"
    reason: str = ""


@attrs.frozen(slots=True, kw_only=True)
class StartGrafting(SeedCommand):
    """Begin blending a trained seed in; `improvement` is its own training signal's gain."""

    TRIGGER = "start_grafting"
    improvement: float


@attrs.frozen(slots=True, kw_only=True)
class Stabilize(SeedCommand):
    """Mark a grafting seed stable once its alpha reached its target."""

    TRIGGER = "stabilize"


@attrs.frozen(slots=True, kw_only=True)
class StartEvaluation(SeedCommand):
    """Start measuring a stabilized seed's contribution."""

    TRIGGER = "evaluate"


@attrs.frozen(slots=True, kw_only=True)
class StartFineTuning(SeedCommand):
    """Fine-tune an evaluated seed whose measured contribution is high enough."""

    TRIGGER = "fine_tune"
    contribution: float


@attrs.frozen(slots=True, kw_only=True)
class FossilizeSeed(SeedCommand):
    """Keep a fine-tuned seed for good."""

    TRIGGER = "fossilize"
    contribution: float
    instability: float = 0.0


@attrs.frozen(slots=True, kw_only=True)
class CullSeed(SeedCommand):
    """Remove a seed and free its kernel."""

    TRIGGER = "cull"
    reason: str = ""


@attrs.frozen(slots=True, kw_only=True)
class RollBackSeed(SeedCommand):
    """Undo a seed's grafting and free its kernel."""

    TRIGGER = "roll_back"
    reason: str = ""


@attrs.frozen(slots=True, kw_only=True)
class EmbargoSeed(SeedCommand):
    """Close a culled, cancelled or rolled-back slot for the configured number of steps.

    `steps` overrides `embargo_steps` for this slot: REPLACE passes 0, since it puts a kernel
    of another kind into the slot at once (the embargo keeps a slot from thrashing on its own).
    """

    TRIGGER = "embargo"
    steps: int | None = None


@attrs.frozen(slots=True, kw_only=True)
class ReleaseSeed(SeedCommand):
    """Return an embargoed slot to DORMANT."""

    TRIGGER = "release"


@attrs.frozen(slots=True, kw_only=True)
class AdjustBlend(SeedCommand):
    """Set a blending seed's alpha."""

    TRIGGER = "adjust_blend"
    alpha: float


@attrs.frozen(slots=True, kw_only=True)
class SetBlendTarget(SeedCommand):
    """Set the alpha a seed ramps towards."""

    TRIGGER = "set_blend_target"
    target: float


@attrs.frozen(slots=True, kw_only=True)
class RegisterSeedLayer(Command):
    """Place a seed layer with `num_seeds` dormant slots."""

    layer: str
    shape_kind: str
    channels: int
    num_seeds: int
    blueprints: tuple[str, ...]


@attrs.frozen(slots=True, kw_only=True)
class StartRun(Command):
    """Begin a run, recording everything replay needs."""

    run_id: str
    master_seed: int
    config: dict[str, Any] = attrs.field(factory=dict)
    dataset_fingerprint: str | None = None
    environment: dict[str, Any] = attrs.field(factory=dict)
    host: dict[str, Any] | None = None
    initial_weights: dict[str, Any] | None = None
    world_size: int = 1
    backend: str | None = None


@attrs.frozen(slots=True, kw_only=True)
class RecordFact(Command):
    """Record a run or controller fact (a decision, a plan, an epoch's metrics, a checkpoint).

    These have no lifecycle to refuse them; routing them through the command bus still
    gives them ids, causation and a place in the same step-boundary transaction.
    """

    event: Any


SEED_COMMANDS: tuple[type[SeedCommand], ...] = (
    GerminateSeed,
    StartTraining,
    CancelSeed,
    StartGrafting,
    Stabilize,
    StartEvaluation,
    StartFineTuning,
    FossilizeSeed,
    CullSeed,
    RollBackSeed,
    EmbargoSeed,
    ReleaseSeed,
    AdjustBlend,
    SetBlendTarget,
)
COMMAND_FOR_TRIGGER: dict[str, type[SeedCommand]] = {c.TRIGGER: c for c in SEED_COMMANDS}
