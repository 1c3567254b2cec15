"""Immutable states the decider folds events into: one per seed, per seed layer, per run."""

from __future__ import annotations

import attrs

from esper_es.core.lifecycle import Stage


@attrs.frozen(slots=True)
class SeedState:
    """One seed slot as its stream's events leave it."""

    seed: str
    stage: Stage = Stage.DORMANT
    blueprint: str | None = None
    kernel_id: str | None = None
    init_seed: int | None = None
    alpha: float = 0.0
    blend_target: float = 0.0
    entered_step: int = 0
    last_step: int = 0
    embargo_until: int | None = None
    version: int = 0

    @classmethod
    def dormant(cls, seed: str) -> SeedState:
        """A fresh slot: DORMANT, no kernel, alpha 0, stream version 0."""
        return cls(seed)


@attrs.frozen(slots=True)
class LayerState:
    """A seed layer as registered: where it sits, its activation shape, the blueprints that fit."""

    name: str
    shape_kind: str = ""
    channels: int = 0
    num_seeds: int = 0
    blueprints: frozenset[str] = frozenset()
    version: int = 0

    def seed_ids(self) -> tuple[str, ...]:
        """Ids of this layer's seeds, `<layer>/<index>`."""
        return tuple(f"{self.name}/{i}" for i in range(self.num_seeds))


@attrs.frozen(slots=True)
class RunState:
    """The run stream's state: whether it started, with which id and config."""

    run_id: str | None = None
    master_seed: int | None = None
    version: int = 0
