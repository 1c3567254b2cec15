"""Helpers for the torch-side tests: an in-memory log that drives the real decider."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor, nn

from esper_es.core import commands as c
from esper_es.core import events as ev
from esper_es.core.config import LifecycleConfig
from esper_es.core.decider import Context, decide, evolve, layer_of
from esper_es.core.state import LayerState, SeedState
from esper_es.nn import CharTransformer, DigitsCNN, Projector, VectorMLP, place_seed_layers
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


HostCase = tuple[Callable[[int], nn.Module], tuple[str, ...], Callable[[torch.Generator], Tensor]]
HOSTS: dict[str, HostCase] = {
    "cnn": (
        lambda s: DigitsCNN(seed=s),
        ("stem", "layer1", "layer2"),
        lambda g: torch.randn(3, 1, 8, 8, generator=g),
    ),
    "mlp": (
        lambda s: VectorMLP(in_features=12, hidden=6, seed=s),
        ("layer1", "layer2"),
        lambda g: torch.randn(4, 12, generator=g),
    ),
    "transformer": (
        lambda s: CharTransformer(vocab_size=11, d_model=8, n_heads=2, max_len=12, seed=s),
        ("blocks.0", "blocks.1.mlp", "blocks.0.attn"),
        lambda g: torch.randint(0, 11, (2, 9), generator=g),
    ),
}


def bits(t: Tensor) -> bytes:
    """Exact bytes, so -0.0 and +0.0 differ."""
    return t.detach().contiguous().numpy().tobytes()


def host_grads(model: nn.Module) -> dict[str, bytes]:
    """Gradients of the host's own parameters, keyed by their pre-placement names."""
    out = {}
    for name, p in model.named_parameters():
        if name.startswith("esper_seeds."):
            continue
        key = name
        out[key] = bits(p.grad) if p.grad is not None else b"none"
    return out


def seeded_case(data: st.DataObject, stage: str) -> tuple[nn.Module, nn.Module, Tensor, Projector]:
    """A host, its untouched twin, an input, and the host's projector after seeds reach `stage`."""
    host_name = data.draw(st.sampled_from(sorted(HOSTS)), label="host")
    make, paths, make_input = HOSTS[host_name]
    host_seed = data.draw(st.integers(0, 2**16), label="host_seed")
    plain = make(host_seed)
    model = copy.deepcopy(plain)
    chosen = data.draw(st.sets(st.sampled_from(paths), min_size=1), label="paths")
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="input_seed"))
    x = make_input(g)
    layers = place_seed_layers(model, {p: 2 for p in sorted(chosen)}, x)
    log = Log()
    for layer in layers.values():
        log.register(layer)
        for seed in layer.seed_ids():
            if not data.draw(st.booleans(), label=f"use {seed}"):
                continue
            bp = data.draw(st.sampled_from(layer.blueprints), label=f"bp {seed}")
            log.germinate(seed, bp, init_seed=data.draw(st.integers(0, 2**63 - 1)))
            if stage == "TRAINING":
                log.walk(seed, "start_training")
    proj = Projector(model, torch.optim.SGD(model.parameters(), lr=0.1))
    proj.apply_all(log.pairs())
    return model, plain, x, proj


def own_pass_trainer(model: nn.Module, layers: Mapping[str, SeedLayer], loss: Any) -> Any:
    """What `trainer.own_pass.OwnPass` reads of a trainer, for a model outside a run."""
    config = SimpleNamespace(
        train=SimpleNamespace(seed_training="own_loss"), library=SimpleNamespace(compile=False)
    )
    return SimpleNamespace(
        config=config,
        layers=dict(layers),
        model=model,
        loss_fn=loss,
        projector=SimpleNamespace(last_seq=0),
    )


def grown_digits(
    counts: Mapping[str, int], seeds: list[tuple[str, str, int, float | None]], host_seed: int = 0
) -> tuple[nn.Module, dict[str, SeedLayer]]:
    """A DigitsCNN with seed layers at `counts` and `seeds` grown: (seed, blueprint, init seed,
    blend alpha, or None to leave it in TRAINING), projected; training seeds left out of the
    forward pass, as the trainer sets them under `own_loss`."""
    model = DigitsCNN(seed=host_seed)
    layers = place_seed_layers(model, dict(counts), model.example_input())
    log = Log()
    for layer in layers.values():
        log.register(layer)
    for seed, blueprint, init_seed, alpha in seeds:
        log.germinate(seed, blueprint, init_seed=init_seed)
        if alpha is None:
            log.walk(seed, "start_training")
        else:
            log.walk(seed, "start_training", "start_grafting")
            log.blend(seed, alpha)
    Projector(model).apply_all(log.pairs())
    for layer in layers.values():
        layer.isolated_training = False
    return model, layers
