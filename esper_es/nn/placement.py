"""Placing seed layers in a user's host without editing its code.

`place_seed_layers(host, {"layer1": SeedLayerSpec(num_seeds=2)}, example_input)` wraps the
module at each dotted path in `Seeded(original, seed_layer)`, so the seed layer runs right after
it. Host keys gain one `original.` component (`layer1.0.weight` → `layer1.original.0.weight`);
`Seeded` also accepts the unwrapped keys when loading, so a plain host's checkpoint still loads.
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
from esper_es.nn.seed_layer import SeedLayer

#: Activation rank -> (shape kind, channel dimension).
_KINDS = {2: ("vector", 1), 3: ("sequence", 2), 4: ("image", 1)}


def _names(names: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if names is None else tuple(names)


@attrs.frozen
class SeedLayerSpec:
    """How many seeds to place at one path, and optionally which blueprints may germinate there."""

    num_seeds: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    blueprints: tuple[str, ...] | None = attrs.field(default=None, converter=_names)


class Seeded(nn.Module):
    """A host module followed by its seed layer."""

    def __init__(self, original: nn.Module, seed_layer: SeedLayer) -> None:
        super().__init__()
        self.original = original
        self.seed_layer = seed_layer
        self._register_load_state_dict_pre_hook(_accept_unwrapped_keys, with_module=True)  # type: ignore[no-untyped-call]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The original module's output, passed through the seed layer."""
        out = self.original(*args, **kwargs)
        seeds = self.seed_layer
        # Calling the dormant seed layer as a module would cost its __call__ machinery on every
        # step (B1); its forward would return `out` unchanged anyway.
        if not seeds._plan:
            return out
        return seeds(out)


def _accept_unwrapped_keys(
    module: Seeded, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
) -> None:
    # A checkpoint of the host before placement names `prefix + "weight"`; map it inside.
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        if rest.startswith(("original.", "seed_layer.")):
            continue
        wrapped = f"{prefix}original.{rest}"
        if wrapped not in state_dict:
            state_dict[wrapped] = state_dict.pop(key)


def _module_paths(host: nn.Module) -> list[str]:
    """The host's dotted module paths as the user wrote them (wrappers looked through)."""
    paths = set()
    for name, _ in host.named_modules():
        parts = name.split(".") if name else []
        if "seed_layer" in parts:
            continue  # seed layers and kernels are ours, not places to put seeds
        user_parts = [p for p in parts if p != "original"]
        if user_parts:
            paths.add(".".join(user_parts))
    return sorted(paths)


def resolve_path(host: nn.Module, path: str) -> tuple[nn.Module, str, nn.Module]:
    """(parent, attribute, module) at user path `path`, looking through `Seeded` wrappers."""
    parts = path.split(".") if path else []
    parent: nn.Module | None = None
    attr = ""
    current = host
    for part in parts:
        while isinstance(current, Seeded) and part not in current._modules:
            current = current.original
        child = current._modules.get(part)
        if child is None:
            paths = _module_paths(host)
            close = difflib.get_close_matches(path, paths, n=5, cutoff=0.5)
            raise UnknownModulePath(path, close, paths)
        parent, attr, current = current, part, child
    if parent is None:
        raise UnknownModulePath(path, [], _module_paths(host))
    return parent, attr, current


def find_seed_layers(model: nn.Module) -> dict[str, SeedLayer]:
    """Every seed layer in `model`, by its name, in module order."""
    return {m.name: m for m in model.modules() if isinstance(m, SeedLayer)}


def attach_seed_layer(host: nn.Module, path: str, seed_layer: SeedLayer) -> Seeded:
    """Wrap the module at `path` so that `seed_layer` runs after it (no dry run)."""
    parent, attr, module = resolve_path(host, path)
    if isinstance(module, Seeded):
        raise ShapeNotFitting(path, f"already holds seed layer {module.seed_layer.name!r}")
    ref = next((p for p in module.parameters()), None)
    wrapped = Seeded(module, seed_layer.to(device=ref.device) if ref is not None else seed_layer)
    parent._modules[attr] = wrapped
    return wrapped


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
    modes = [(m, m.training) for m in host.modules()]
    try:
        # The dry run must leave no trace: no autograd, no RNG draws, no batch-norm updates.
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            host.eval()
            args = example_input if isinstance(example_input, tuple) else (example_input,)
            host(*args)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
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
    for path in norm:  # fail on a bad or taken path before changing anything
        module = resolve_path(host, path)[2]
        if isinstance(module, Seeded):
            raise ShapeNotFitting(path, f"already holds seed layer {module.seed_layer.name!r}")
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
    # Deepest paths first, so wrapping an outer module never hides an inner path.
    for path in sorted(norm, key=lambda p: -p.count(".")):
        attach_seed_layer(host, path, layers[path])
    return layers
