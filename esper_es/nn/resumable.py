"""Hosts whose forward can resume at a seed point, so a seed's own pass skips the layers before it.

A seed in TRAINING learns from its own loss: the host's output with the seed blended at alpha
1 (`trainer.own_pass.OwnPass`). Through the host's `forward` that pass recomputes
every layer before the seed point, although the training pass of the same step has just
computed the same activation there from the same weights. A host that implements
`forward_after(point, output)` (the rest of its `forward` once the module at `point` returned
`output`) lets the trainer start the own pass from that activation instead. The seed
measurements (`nn.telemetry`) use it the same way for the second pass of each pair they run.

The two activations are the same bits only if nothing before the point computes differently
in training and evaluation mode (the training pass runs in one, the own pass in the other), so
a host implements `forward_after` only where that holds for its own modules, as every built-in
host does (no batch norm, no dropout). The kernels blended before the point must hold it too:
`mode_independent_kernels` accepts only esper-es's built-in blueprints, none of which depends on
the mode; a model holding any other kernel takes the full forward.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from esper_es.nn.blueprints import is_builtin_blueprint
from esper_es.nn.kernels import Kernel
from esper_es.nn.seed_layer import SeedLayer


@runtime_checkable
class ResumableHost(Protocol):
    """A host that can finish its `forward` from the output of one of its modules."""

    def resumes_at(self, point: str) -> bool:
        """Whether `forward_after` can start at the module at `point`."""
        ...

    def forward_after(self, point: str, output: Tensor) -> Tensor:
        """What `forward` returns when the module at `point` returned `output`.

        Raises KeyError for a point it cannot resume at. The modules after `point` are called
        as `forward` calls them (their hooks, seed layers included, run).
        """
        ...


def chain_after(host: nn.Module, chain: Sequence[str], point: str, output: Tensor) -> Tensor:
    """`output` through the modules of `chain` after `point` (a host whose forward is a chain)."""
    try:
        start = chain.index(point) + 1
    except ValueError:
        raise KeyError(f"{type(host).__name__} cannot resume its forward at {point!r}") from None
    for name in chain[start:]:
        output = host.get_submodule(name)(output)
    return output


def mode_independent_kernels(model: nn.Module) -> bool:
    """Whether every kernel in `model` is of a built-in blueprint (none depends on the mode)."""
    return all(is_builtin_blueprint(m.blueprint) for m in model.modules() if isinstance(m, Kernel))


def resumable_layers(model: nn.Module, layers: Iterable[SeedLayer]) -> list[SeedLayer]:
    """The distinct seed layers of `layers` at whose point `model` can resume its forward."""
    if not isinstance(model, ResumableHost):
        return []
    distinct = {id(layer): layer for layer in layers}.values()
    return [layer for layer in distinct if model.resumes_at(layer.name)]


@contextmanager
def capturing(layers: Sequence[SeedLayer]) -> Iterator[dict[str, Tensor]]:
    """While open, `layers` keep the activation their point produces (`ActivationCapture`);
    on exit the dict holds each one still usable (not changed in place since), by layer name."""
    starts: dict[str, Tensor] = {}
    for layer in layers:
        layer.capture.on = True
    try:
        yield starts
    finally:
        for layer in layers:
            layer.capture.on = False
    for layer in layers:
        start = layer.capture.take()
        if start is not None:
            starts[layer.name] = start


def output_from(model: nn.Module, layer: SeedLayer, start: Tensor) -> Tensor:
    """`model`'s output when `layer`'s point produced `start` (its seed layer runs on it first)."""
    host: ResumableHost = model  # type: ignore[assignment]
    return host.forward_after(layer.name, layer(start))
