"""Kernels: a blueprint made concrete for one seed, named by a content hash of its recipe.

Initial weights come only from a `torch.Generator` seeded with the kernel's init seed (SPEC §5),
so a kernel is reproducible from its germination event alone and never perturbs the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import attrs
import torch
from torch import Tensor, nn

from esper_es.core.canonical import canonical_json
from esper_es.core.ids import derive_seed, kernel_id
from esper_es.errors import ConfigError
from esper_es.nn.blueprints import SHAPE_KINDS, get_blueprint, known_blueprints
from esper_es.nn.errors import ShapeNotFitting

#: Scale of the output layer's init relative to the fan-in default. Small, so a fresh kernel
#: barely moves the host when blended, yet non-zero, so every layer of it gets gradient at once.
OUT_SCALE: Final = 0.1


def derive_init_seed(master_seed: int, key: str) -> int:
    """A 63-bit kernel init seed from the run's master seed and an event or seed id."""
    return derive_seed(master_seed, "kernel", key)


def shapes_key(shape_kind: str, channels: int) -> str:
    """The `shapes` part of a kernel id: the activation kind and width, e.g. `image:4`."""
    return f"{shape_kind}:{channels}"


@attrs.frozen
class KernelSpec:
    """Everything that determines a kernel: blueprint, version, resolved config, shape, seed."""

    blueprint: str
    version: int
    config: Mapping[str, Any]
    shape_kind: str
    channels: int
    init_seed: int

    @property
    def kernel_id(self) -> str:
        """The content hash naming this kernel (esper_es.core.ids.kernel_id)."""
        return kernel_id(
            self.blueprint,
            self.version,
            canonical_json(dict(self.config)),
            shapes_key(self.shape_kind, self.channels),
            self.init_seed,
        )


def kernel_spec(
    blueprint: str,
    shape_kind: str,
    channels: int,
    init_seed: int,
    config: Mapping[str, Any] | None = None,
) -> KernelSpec:
    """Resolve a blueprint's config for one activation; raises if it is unknown or does not fit."""
    bp = get_blueprint(blueprint)
    resolved = bp.resolve_config(config)
    if shape_kind not in SHAPE_KINDS or not bp.fits(shape_kind, channels, resolved):
        kinds = ", ".join(sorted(bp.shape_kinds))
        raise ShapeNotFitting(
            blueprint,
            f"blueprint {blueprint!r} (fits {kinds}) does not fit {shape_kind} activations "
            f"with {channels} channels and config {canonical_json(resolved)}",
        )
    if not 0 <= int(init_seed) < 2**63:
        raise ValueError(f"init_seed {init_seed} is not a 63-bit non-negative integer")
    return KernelSpec(bp.name, bp.version, resolved, shape_kind, channels, int(init_seed))


def kernel_id_for(
    blueprint: str,
    shape_kind: str,
    channels: int,
    init_seed: int,
    config: Mapping[str, Any] | None = None,
) -> str:
    """The kernel id a germination command should carry, without building the kernel."""
    return kernel_spec(blueprint, shape_kind, channels, init_seed, config).kernel_id


def check_kernel_config(kernel_config: Mapping[str, Mapping[str, Any]], key: str) -> None:
    """Refuse, naming `key.<blueprint>[.<field>]`, overrides of unknown blueprints or fields."""
    for name, overrides in kernel_config.items():
        if name not in known_blueprints():
            known = ", ".join(known_blueprints())
            raise ConfigError(f"{key}.{name}", f"unknown blueprint; known: {known}")
        try:
            get_blueprint(name).resolve_config(overrides)
        except ConfigError as exc:
            raise ConfigError(f"{key}.{exc.key}", exc.problem) from None


class Kernel(nn.Module):
    """One seed's kernel: the blueprint's module (`body`) plus the recipe that made it."""

    def __init__(self, spec: KernelSpec, body: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.kernel_id = spec.kernel_id
        self.blueprint = spec.blueprint
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        """The kernel's delta for activation `x` (same shape)."""
        out: Tensor = self.body(x)
        return out

    def extra_repr(self) -> str:
        """Show the id and blueprint in `print(model)`."""
        return f"{self.kernel_id}, blueprint={self.blueprint}"


def build_kernel(
    blueprint: str,
    shape_kind: str,
    channels: int,
    init_seed: int,
    config: Mapping[str, Any] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Kernel:
    """Build a kernel whose weights come only from a generator seeded with `init_seed`."""
    return build_kernel_from_spec(
        kernel_spec(blueprint, shape_kind, channels, init_seed, config), dtype=dtype, device=device
    )


def build_kernel_from_spec(
    spec: KernelSpec, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> Kernel:
    """Build the kernel a resolved spec describes (see `build_kernel`)."""
    bp = get_blueprint(spec.blueprint)
    # Constructors draw their default init from the global RNG; forking it keeps the caller's
    # stream untouched, and every parameter is overwritten from the dedicated generator below.
    with torch.random.fork_rng(devices=[]):
        body = bp.factory(spec.shape_kind, spec.channels, spec.config)
    generator = torch.Generator(device="cpu").manual_seed(spec.init_seed)
    init_weights(body, generator)
    return Kernel(spec, body.to(dtype=dtype, device=device))


def _fan_in(weight: Tensor) -> int:
    return int(weight[0].numel()) if weight.dim() >= 2 else int(weight.numel())


def init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """Initialise every parameter of `module` from `generator` alone, output layer small."""
    own = getattr(module, "init_weights", None)
    if callable(own):
        with torch.no_grad():
            own(generator)
        return
    done: set[int] = set()
    with torch.no_grad():
        for sub in module.modules():
            custom = getattr(sub, "init_weights", None)
            if callable(custom):
                custom(generator)
                done.update(id(p) for p in sub.parameters())
                continue
            if isinstance(sub, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
                bound = 1.0 / math.sqrt(max(1, _fan_in(sub.weight)))
                sub.weight.uniform_(-bound, bound, generator=generator)
                if sub.bias is not None:
                    sub.bias.zero_()
            elif isinstance(sub, nn.LayerNorm | nn.GroupNorm | nn.modules.batchnorm._NormBase):
                if sub.weight is not None:
                    sub.weight.fill_(1.0)
                if sub.bias is not None:
                    sub.bias.zero_()
            else:
                continue
            done.update(id(p) for p in sub.parameters(recurse=False))
        # Whatever no rule covered (custom Parameters) gets a small normal draw, still seeded.
        for p in module.parameters():
            if id(p) not in done:
                p.normal_(0.0, 0.02, generator=generator)
        out = getattr(module, "out", None)
        if isinstance(out, nn.Module):
            _init_out(out, generator)


def _init_out(out: nn.Module, generator: torch.Generator) -> None:
    for name, p in out.named_parameters():
        if name.endswith("bias"):
            p.zero_()
        else:
            bound = OUT_SCALE / math.sqrt(max(1, _fan_in(p)))
            p.uniform_(-bound, bound, generator=generator)
