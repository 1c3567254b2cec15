"""Placing seed layers in a user's host without editing its code.

`place_seed_layers(host, {"layer1": SeedLayerSpec(num_seeds=2)}, example_input)` makes the seed
layer run right after the module at each dotted path, and keeps every one of the host's own
`state_dict` keys as it was: a checkpoint of the plain host loads with `strict=True` before or
after placement (while every seed is dormant), and the host's own checkpoints keep loading
into it.

How: the seed layers live in one container registered on the host, `esper_seeds`, under
their path with dots replaced by `__` (`layer1` -> `esper_seeds.layer1.alphas`,
`blocks.0.mlp` -> `esper_seeds.blocks__0__mlp.kernels.0.…`), and a forward hook on the
target module passes its output through the seed layer. Why a hook rather than wrapping the
module (what placement did before): a wrapper sits at the module's path, so every key below it
gains a component; a hook changes nothing in the module tree. The hook is on the module only
while its seed layer holds a kernel (`seed_layer.SeedPoint`): a module with any forward hook
takes torch's slower call path, so a dormant seed point is no hook at all, and the module's
output is its own, bit for bit, at no cost (B1, `bench/b1_dormant_overhead.py`); a germinated
seed that blends nothing yet makes the hook return `None`, the output untouched. Hooks are
module state: they survive `deepcopy`,
pickling and `.to()`; a `forward` called directly (not through `module(...)`) skips them, as
it skips every hook. One visible trace: a host that is itself a container (`nn.Sequential`,
`nn.ModuleList`, `nn.ModuleDict`) lists `esper_seeds` as its last child (`len(host)` grows by
one); in a `Sequential` it is called last and is the identity.

Channels and shape kind are read off a dry forward pass with the user's example input.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from esper_es.nn.blueprints import get_blueprint
from esper_es.nn.errors import ShapeNotFitting, UnknownModulePath
from esper_es.nn.modes import eval_mode
from esper_es.nn.seed_layer import SeedLayer, SeedPoint

#: Activation rank -> (shape kind, channel dimension).
_KINDS = {2: ("vector", 1), 3: ("sequence", 2), 4: ("image", 1)}

#: The attribute of the host that holds its seed layers (the prefix of their state_dict keys).
SEEDS_ATTR = "esper_seeds"


def _names(names: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if names is None else tuple(names)


@attrs.frozen
class SeedLayerSpec:
    """How many seeds to place at one path, and optionally which blueprints may germinate there."""

    num_seeds: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    blueprints: tuple[str, ...] | None = attrs.field(default=None, converter=_names)


class SeedLayers(nn.ModuleDict):
    """The host's seed layers, keyed by `seed_key(path)`; registered as `host.esper_seeds`."""

    def __init__(self) -> None:
        super().__init__()
        self._register_load_state_dict_pre_hook(_plain_host_checkpoint, with_module=True)  # type: ignore[no-untyped-call]

    def forward(self, x: Any) -> Any:
        """The identity: an `nn.Sequential` host calls its last child (this one) on its output."""
        return x


def _plain_host_checkpoint(
    module: SeedLayers, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
) -> None:
    # A checkpoint of the host alone (no key under `esper_seeds.`) loads strictly while every
    # seed is dormant: the dormant seed layers keep their state, which is the identity anyway.
    # Once a seed holds a kernel the model has grown, and such a checkpoint no longer covers it.
    if any(k.startswith(prefix) for k in state_dict):
        return
    if any(len(layer.kernels) for layer in module.values() if isinstance(layer, SeedLayer)):
        return
    for key, value in module.state_dict().items():
        state_dict[prefix + key] = value


def seed_key(path: str) -> str:
    """The key of the seed layer at module path `path` inside `esper_seeds`."""
    return path.replace(".", "__")


class SeedHook:
    """The forward hook that runs a seed layer on its module's output."""

    def __init__(self, layer: SeedLayer) -> None:
        self.layer = layer

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        """None (output unchanged) while no seed is active, else the seed layer's output."""
        layer = self.layer
        capture = layer.capture
        if capture.on:
            capture.keep(output)
        # Calling the dormant seed layer as a module would cost its __call__ machinery on every
        # step (B1); its forward would return `output` unchanged anyway.
        if not layer._plan:
            return None
        return layer(output)


def _container(host: nn.Module, create: bool) -> SeedLayers | None:
    found = host._modules.get(SEEDS_ATTR)
    if found is None and SEEDS_ATTR in host.__dict__:
        raise ShapeNotFitting("", f"the host's attribute {SEEDS_ATTR!r} is not esper-es's")
    if found is not None and not isinstance(found, SeedLayers):
        raise ShapeNotFitting("", f"the host's module {SEEDS_ATTR!r} is not esper-es's")
    if found is None and create:
        found = SeedLayers()
        host.add_module(SEEDS_ATTR, found)
    return found


def _module_paths(host: nn.Module) -> list[str]:
    """The host's dotted module paths as the user wrote them (our seed layers left out)."""
    paths = set()
    for name, _ in host.named_modules():
        if name and name.split(".")[0] != SEEDS_ATTR:
            paths.add(name)
    return sorted(paths)


def resolve_path(host: nn.Module, path: str) -> tuple[nn.Module, str, nn.Module]:
    """(parent, attribute, module) at the host's module path `path`."""
    parts = path.split(".") if path else []
    parent: nn.Module | None = None
    attr = ""
    current = host
    for part in parts:
        child = None if (parent is None and part == SEEDS_ATTR) else current._modules.get(part)
        if child is None:
            paths = _module_paths(host)
            close = difflib.get_close_matches(path, paths, n=5, cutoff=0.5)
            raise UnknownModulePath(path, close, paths)
        parent, attr, current = current, part, child
    if parent is None:
        raise UnknownModulePath(path, [], _module_paths(host))
    return parent, attr, current


def find_seed_layers(model: nn.Module) -> dict[str, SeedLayer]:
    """Every seed layer in `model`, by its name (its path), in placement order."""
    return {m.name: m for m in model.modules() if isinstance(m, SeedLayer)}


def _taken(host: nn.Module, path: str) -> SeedLayer | None:
    container = _container(host, create=False)
    layer = None if container is None else container._modules.get(seed_key(path))
    return layer if isinstance(layer, SeedLayer) else None


def attach_seed_layer(host: nn.Module, path: str, seed_layer: SeedLayer) -> SeedLayer:
    """Make `seed_layer` run after the module at `path` (no dry run); returns it."""
    module = resolve_path(host, path)[2]
    held = _taken(host, path)
    if held is not None:
        raise ShapeNotFitting(path, f"already holds seed layer {held.name!r}")
    key = seed_key(path)
    container = _container(host, create=True)
    assert container is not None
    if key in container:
        raise ShapeNotFitting(path, f"its seed key {key!r} is taken by another path")
    ref = next((p for p in module.parameters()), None)
    layer = seed_layer.to(device=ref.device) if ref is not None else seed_layer
    container[key] = layer
    hook = SeedHook(layer)
    layer.attach_point(SeedPoint(module, hook, module.register_forward_hook(hook).id))
    return layer


def infer_activation(
    host: nn.Module, paths: list[str], example_input: Any
) -> dict[str, tuple[str, int]]:
    """(shape kind, channels) of each path's output, from one dry forward pass."""
    seen: dict[str, tuple[int, ...]] = {}
    problems: dict[str, str] = {}
    handles = []

    def hook_for(path: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, Tensor):
                problems[path] = f"its output is a {type(output).__name__}, not a tensor"
                return
            shape = tuple(output.shape)
            if path in seen and seen[path] != shape:
                problems[path] = f"it is called with different shapes {seen[path]} and {shape}"
            seen.setdefault(path, shape)

        return hook

    for path in paths:
        handles.append(resolve_path(host, path)[2].register_forward_hook(hook_for(path)))
    try:
        # The dry run must leave no trace: no autograd, no RNG draws, no batch-norm updates.
        with eval_mode(host), torch.no_grad(), torch.random.fork_rng(devices=[]):
            args = example_input if isinstance(example_input, tuple) else (example_input,)
            host(*args)
    finally:
        for h in handles:
            h.remove()
    result: dict[str, tuple[str, int]] = {}
    for path in paths:
        if path in problems:
            raise ShapeNotFitting(path, problems[path])
        if path not in seen:
            raise ShapeNotFitting(path, "the module is not called by the host's forward pass")
        shape = seen[path]
        if len(shape) not in _KINDS:
            raise ShapeNotFitting(
                path,
                f"activation shape {shape} is not an image (B,C,H,W), sequence (B,T,C) "
                "or vector (B,C)",
            )
        kind, dim = _KINDS[len(shape)]
        result[path] = (kind, shape[dim])
    return result


def place_seed_layers(
    host: nn.Module, specs: Mapping[str, SeedLayerSpec | int], example_input: Any
) -> dict[str, SeedLayer]:
    """Insert a seed layer after the module at each dotted path; returns them by name (= path)."""
    norm = {
        p: s if isinstance(s, SeedLayerSpec) else SeedLayerSpec(num_seeds=s)
        for p, s in specs.items()
    }
    keys: dict[str, str] = {}
    for path in norm:  # fail on a bad or taken path before changing anything
        resolve_path(host, path)
        held = _taken(host, path)
        if held is not None:
            raise ShapeNotFitting(path, f"already holds seed layer {held.name!r}")
        other = keys.setdefault(seed_key(path), path)
        if other != path:
            raise ShapeNotFitting(path, f"its seed key {seed_key(path)!r} is also {other!r}'s")
    shapes = infer_activation(host, list(norm), example_input)
    layers: dict[str, SeedLayer] = {}
    for path, spec in norm.items():
        kind, channels = shapes[path]
        if spec.blueprints is not None:
            for name in spec.blueprints:
                bp = get_blueprint(name)
                if not bp.fits(kind, channels):
                    raise ShapeNotFitting(
                        path,
                        f"blueprint {name!r} (fits {', '.join(sorted(bp.shape_kinds))}) does not "
                        f"fit its {kind} activation with {channels} channels",
                    )
        layer = SeedLayer(path, kind, channels, spec.num_seeds, spec.blueprints)
        if not layer.blueprints:
            raise ShapeNotFitting(
                path, f"no registered blueprint fits its {kind} activation with {channels} channels"
            )
        layers[path] = layer
    for path in norm:
        attach_seed_layer(host, path, layers[path])
    return layers
