"""Helpers for the torch-side tests: an in-memory log that drives the real decider."""

from __future__ import annotations

import itertools
from typing import Any

from esper_es.core import commands as c
from esper_es.core import events as ev
from esper_es.core.config import LifecycleConfig
from esper_es.core.decider import Context, decide, evolve, layer_of
from esper_es.core.state import LayerState, SeedState
from esper_es.nn.kernels import kernel_id_for
from esper_es.nn.seed_layer import SeedLayer

#: Gates that never block, so tests can walk the whole lifecycle in a few steps.
OPEN_GATES = LifecycleConfig(
    min_training_steps=0, min_stabilization_steps=0, embargo_steps=0, min_improvement=-1.0
)

IMAGE, SEQUENCE, VECTOR = "image", "sequence", "vector"


class Log:
    """Commands in, events out, through `decide`/`evolve`, numbered 1, 2, 3, ..."""

    def __init__(self, config: LifecycleConfig = OPEN_GATES) -> None:
        self.config = config
        self.events: list[ev.Event] = []
        self.seeds: dict[str, SeedState] = {}
        self.layers: dict[str, LayerState] = {}
        self._ids = itertools.count(1)

    def pairs(self) -> list[tuple[int, ev.Event]]:
        """(seq, event) for every event so far."""
        return list(enumerate(self.events, 1))

    def _append(self, events: tuple[ev.Event, ...]) -> list[tuple[int, ev.Event]]:
        start = len(self.events) + 1
        self.events.extend(events)
        return list(enumerate(events, start))

    def register(self, layer: SeedLayer) -> list[tuple[int, ev.Event]]:
        """Record a placed seed layer."""
        events = decide(None, layer.register_command(f"cmd-{next(self._ids)}"))
        for e in events:
            assert isinstance(e, ev.SeedLayerRegistered)
            self.layers[e.layer] = evolve(None, e)
        return self._append(events)

    def command(self, cls: type[c.SeedCommand], seed: str, **kw: Any) -> list[tuple[int, ev.Event]]:
        """Decide one seed command (raises if refused) and record its events."""
        state = self.seeds.get(seed) or SeedState.dormant(seed)
        kw.setdefault("step", state.last_step)
        cmd = cls(command_id=f"cmd-{next(self._ids)}", seed=seed, **kw)
        events = decide(state, cmd, Context(self.config, self.layers.get(layer_of(seed))))
        for e in events:
            state = evolve(state, e)
        self.seeds[seed] = state
        return self._append(events)

    def germinate(self, seed: str, blueprint: str, init_seed: int = 0, **kw: Any) -> Any:
        """Germinate `seed` with a correctly computed kernel id."""
        layer = self.layers[layer_of(seed)]
        kid = kernel_id_for(blueprint, layer.shape_kind, layer.channels, init_seed)
        return self.command(
            c.GerminateSeed, seed, blueprint=blueprint, kernel_id=kid, init_seed=init_seed, **kw
        )

    def walk(self, seed: str, *triggers: str, **kw: Any) -> None:
        """Apply a chain of simple triggers (`start_training`, `cull`, ...) to `seed`."""
        for trigger in triggers:
            cls = c.COMMAND_FOR_TRIGGER[trigger]
            extra: dict[str, Any] = {
                "start_grafting": {"improvement": 0.5},
                "fine_tune": {"contribution": 0.1},
                "fossilize": {"contribution": 0.1},
            }.get(trigger, {})
            self.command(cls, seed, **{**extra, **kw})

    def blend(self, seed: str, alpha: float) -> None:
        """Set a blending seed's alpha."""
        self.command(c.AdjustBlend, seed, alpha=alpha)


def shape_for(kind: str, channels: int, batch: int = 2, extent: int = 3) -> tuple[int, ...]:
    """An activation shape of `kind` with `channels` channels."""
    if kind == IMAGE:
        return (batch, channels, extent, extent + 1)
    if kind == SEQUENCE:
        return (batch, extent + 2, channels)
    return (batch, channels)
