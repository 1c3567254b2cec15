"""The blueprint library: named, versioned recipes for kernels, and the registry that holds them.

A blueprint's module maps an activation to a *delta* of the same shape; its seed layer adds
`alpha * delta` to the host's activation. Every module names its output layer `out`, which is
initialised small (see `kernels.OUT_SCALE`): the kernel starts close to "no change", so the
host's function moves smoothly while alpha ramps.

Width, i.e. how much capacity a kernel adds, is part of its config: `conv3x3` and `mlp` have
`expansion` (hidden width = the activation's channels x expansion, so a kernel can be wider
than the narrow host it sits in), `lora` has `rank`, `se_attention` has `reduction`. The
defaults never change for a given blueprint version: a kernel id hashes the resolved config,
and a `SeedGerminated` recorded before configs were logged (`config = {}`) means the defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final, overload

import attrs
import torch
from torch import Tensor, nn

from esper_es.errors import ConfigError, UnknownBlueprint

SHAPE_KINDS: Final = ("image", "sequence", "vector")

#: factory(shape_kind, channels, config) -> module mapping an activation to a same-shape delta.
Factory = Callable[[str, int, Mapping[str, Any]], nn.Module]
FitsPredicate = Callable[[int, Mapping[str, Any]], bool]


@attrs.frozen(eq=False)
class Blueprint:
    """A named, versioned kernel recipe: its default config and the shape kinds it fits."""

    name: str
    version: int
    shape_kinds: frozenset[str]
    config: Mapping[str, Any]
    factory: Factory
    fits_channels: FitsPredicate | None = None
    description: str = ""

    def resolve_config(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The default config updated by `overrides`; unknown keys and wrong types are refused.

        A value takes its default's type (an integer where the default is a float becomes that
        float), so `expansion = 8` and `expansion = 8.0` resolve, and hash, alike.
        """
        resolved = dict(self.config)
        for key, value in (overrides or {}).items():
            if key not in resolved:
                known = ", ".join(sorted(resolved)) or "(none)"
                raise ConfigError(f"{self.name}.{key}", f"unknown key; known: {known}")
            resolved[key] = _like(resolved[key], value, f"{self.name}.{key}")
        return resolved

    def fits(self, shape_kind: str, channels: int, config: Mapping[str, Any] | None = None) -> bool:
        """Whether a kernel of this blueprint can sit on activations of this kind and width."""
        if shape_kind not in self.shape_kinds or channels < 1:
            return False
        if self.fits_channels is None:
            return True
        return bool(self.fits_channels(channels, self.resolve_config(config)))


def _like(default: Any, value: Any, key: str) -> Any:
    """`value` checked against, and converted to, the type of `default` (JSON scalars only)."""
    kind = type(default)
    if kind is bool or isinstance(value, bool):
        ok = kind is bool and isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and math.isfinite(value)
        value = float(value) if ok else value
    elif kind in (int, str):
        ok = isinstance(value, kind)
    else:
        return value
    if not ok:
        raise ConfigError(
            key, f"expected {kind.__name__} like the default {default!r}, got {value!r}"
        )
    return value


_REGISTRY: dict[str, Blueprint] = {}


@overload
def register_blueprint(blueprint: Blueprint, /, *, replace: bool = False) -> Blueprint: ...
@overload
def register_blueprint(
    name: str,
    /,
    *,
    version: int = 1,
    shape_kinds: tuple[str, ...] | frozenset[str] = SHAPE_KINDS,
    config: Mapping[str, Any] | None = None,
    fits: FitsPredicate | None = None,
    description: str = "",
    replace: bool = False,
) -> Callable[[Factory], Factory]: ...
def register_blueprint(
    name_or_blueprint: str | Blueprint,
    /,
    *,
    version: int = 1,
    shape_kinds: tuple[str, ...] | frozenset[str] = SHAPE_KINDS,
    config: Mapping[str, Any] | None = None,
    fits: FitsPredicate | None = None,
    description: str = "",
    replace: bool = False,
) -> Blueprint | Callable[[Factory], Factory]:
    """Register a blueprint, directly or as a decorator on its factory."""
    if isinstance(name_or_blueprint, Blueprint):
        return _register(name_or_blueprint, replace)
    name = name_or_blueprint

    def decorate(factory: Factory) -> Factory:
        _register(
            Blueprint(
                name=name,
                version=version,
                shape_kinds=frozenset(shape_kinds),
                config=dict(config or {}),
                factory=factory,
                fits_channels=fits,
                description=description or (factory.__doc__ or "").strip().split("\n")[0],
            ),
            replace,
        )
        return factory

    return decorate


def _register(bp: Blueprint, replace: bool) -> Blueprint:
    if not bp.name or not isinstance(bp.version, int) or bp.version < 1:
        raise ConfigError("blueprint", f"needs a name and a version >= 1, got {bp!r}")
    bad = set(bp.shape_kinds) - set(SHAPE_KINDS)
    if bad or not bp.shape_kinds:
        raise ConfigError(f"{bp.name}.shape_kinds", f"must be a non-empty subset of {SHAPE_KINDS}")
    if bp.name in _REGISTRY and not replace:
        # Same name must mean same recipe, or kernel ids (which hash name and version) lie.
        raise ConfigError(bp.name, "blueprint already registered; pass replace=True")
    _REGISTRY[bp.name] = bp
    return bp


def unregister_blueprint(name: str) -> None:
    """Remove a blueprint from the registry (for tests and plugins)."""
    _REGISTRY.pop(name, None)


def get_blueprint(name: str) -> Blueprint:
    """The registered blueprint `name`; raises UnknownBlueprint listing the known ones."""
    bp = _REGISTRY.get(name)
    if bp is None:
        raise UnknownBlueprint(name, _REGISTRY)
    return bp


def known_blueprints() -> tuple[str, ...]:
    """Names of every registered blueprint, sorted."""
    return tuple(sorted(_REGISTRY))


def fitting_blueprints(shape_kind: str, channels: int) -> tuple[str, ...]:
    """Names of the blueprints (default config) that fit this activation kind and width."""
    return tuple(n for n in sorted(_REGISTRY) if _REGISTRY[n].fits(shape_kind, channels))


# --- shared pieces ----------------------------------------------------------------------


def _to_channels_last(x: Tensor, shape_kind: str) -> Tensor:
    return x.permute(0, 2, 3, 1) if shape_kind == "image" else x


def _from_channels_last(y: Tensor, shape_kind: str) -> Tensor:
    return y.permute(0, 3, 1, 2) if shape_kind == "image" else y


class ChannelWise(nn.Module):
    """Applies a channel-last body at every position of an image, sequence or vector."""

    def __init__(self, shape_kind: str, body: nn.Module, out: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.shape_kind = shape_kind
        self.body = body
        self.act = act
        self.out = out

    def forward(self, x: Tensor) -> Tensor:
        """The delta for `x`, same shape."""
        h = self.out(self.act(self.body(_to_channels_last(x, self.shape_kind))))
        return _from_channels_last(h, self.shape_kind)


class ConvResidual(nn.Module):
    """Residual branch of a 3x3 conv block: conv, ReLU, conv."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, hidden, 3, padding=1)
        self.act = nn.ReLU()
        self.out = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """The delta for `x`, same shape."""
        out: Tensor = self.out(self.act(self.conv(x)))
        return out


class DepthwiseSeparable(nn.Module):
    """Depthwise kxk conv, ReLU, pointwise 1x1 conv."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels
        )
        self.act = nn.ReLU()
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """The delta for `x`, same shape."""
        out: Tensor = self.out(self.act(self.depthwise(x)))
        return out


class SqueezeExcite(nn.Module):
    """Squeeze-excitation as a delta: x · tanh(gate(pooled x)), ~0 at init."""

    def __init__(self, shape_kind: str, channels: int, hidden: int) -> None:
        super().__init__()
        self.shape_kind = shape_kind
        self.fc = nn.Linear(channels, hidden)
        self.act = nn.ReLU()
        self.out = nn.Linear(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        """The delta for `x`, same shape."""
        if self.shape_kind == "image":
            pooled = x.mean(dim=(2, 3))
            gate = torch.tanh(self.out(self.act(self.fc(pooled))))
            return x * gate[:, :, None, None]
        # Sequences pool causally (running mean) so that a causal host stays causal.
        steps = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)
        pooled = x.cumsum(dim=1) / steps[None, :, None]
        return x * torch.tanh(self.out(self.act(self.fc(pooled))))


class SelfAttention(nn.Module):
    """Multi-head self-attention over a sequence, causal by default."""

    def __init__(self, channels: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        """The delta for `x`, same shape."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(c // self.heads))
        if self.causal:
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        y = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, c)
        out: Tensor = self.out(y)
        return out


class ChannelNorm(nn.Module):
    """Normalise over channels, then a per-channel affine `out` (small gain at init)."""

    def __init__(self, shape_kind: str, channels: int, eps: float) -> None:
        super().__init__()
        self.shape_kind = shape_kind
        self.eps = eps
        self.norm = nn.LayerNorm(channels, eps=eps, elementwise_affine=False)
        self.out = Affine(channels)

    def forward(self, x: Tensor) -> Tensor:
        """The delta for `x`, same shape."""
        h = self.out(self.norm(_to_channels_last(x, self.shape_kind)))
        return _from_channels_last(h, self.shape_kind)


class Affine(nn.Module):
    """Per-channel scale and shift over the last dimension."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        """x · weight + bias."""
        return x * self.weight + self.bias


def _hidden(channels: int, expansion: float) -> int:
    return max(1, round(channels * expansion))


# --- the built-in blueprints --------------------------------------------------------------


@register_blueprint(
    "conv3x3",
    shape_kinds=("image",),
    config={"expansion": 1.0},
    fits=lambda c, cfg: cfg["expansion"] > 0,
)
def _conv3x3(shape_kind: str, channels: int, config: Mapping[str, Any]) -> nn.Module:
    """Residual 3x3 conv block (conv, ReLU, conv); hidden channels = channels x expansion."""
    return ConvResidual(channels, _hidden(channels, config["expansion"]))


@register_blueprint(
    "depthwise",
    shape_kinds=("image",),
    config={"kernel_size": 3},
    fits=lambda c, cfg: int(cfg["kernel_size"]) % 2 == 1,
)
def _depthwise(shape_kind: str, channels: int, config: Mapping[str, Any]) -> nn.Module:
    """Depthwise-separable conv (depthwise kxk, ReLU, pointwise)."""
    return DepthwiseSeparable(channels, int(config["kernel_size"]))


@register_blueprint(
    "se_attention",
    shape_kinds=("image", "sequence"),
    config={"reduction": 4},
    fits=lambda c, cfg: cfg["reduction"] >= 1,
)
def _se(shape_kind: str, channels: int, config: Mapping[str, Any]) -> nn.Module:
    """Squeeze-excitation channel attention (causal pooling on sequences)."""
    return SqueezeExcite(shape_kind, channels, max(1, channels // int(config["reduction"])))


@register_blueprint("mlp", config={"expansion": 2.0}, fits=lambda c, cfg: cfg["expansion"] > 0)
def _mlp(shape_kind: str, channels: int, config: Mapping[str, Any]) -> nn.Module:
    """Two-layer MLP over channels (Linear, GELU, Linear) at every position; hidden x expansion."""
    hidden = _hidden(channels, config["expansion"])
    return ChannelWise(
        shape_kind, nn.Linear(channels, hidden), nn.Linear(hidden, channels), nn.GELU()
    )


@register_blueprint("lora", config={"rank": 4}, fits=lambda c, cfg: cfg["rank"] >= 1)
def _lora(shape_kind: str, channels: int, config: Mapping[str, Any]) -> nn.Module:
    """Low-rank adapter: down-projection to `rank`, up-projection back, no bias."""
    rank = int(config["rank"])
    return ChannelWise(
        shape_kind,
        nn.Linear(channels, rank, bias=False),
        nn.Linear(rank, channels, bias=False),
        nn.Identity(),
    )


@register_blueprint(
    "attention",
    shape_kinds=("sequence",),
    config={"heads": 1, "causal": True},
    fits=lambda c, cfg: int(cfg["heads"]) >= 1 and c % int(cfg["heads"]) == 0,
)
def _attention(shape_kind: str, channels: int, config: Mapping[str, Any]) -> nn.Module:
    """Multi-head self-attention over the sequence (causal unless configured otherwise)."""
    return SelfAttention(channels, int(config["heads"]), bool(config["causal"]))


@register_blueprint("norm", config={"eps": 1e-5}, fits=lambda c, cfg: c >= 2)
def _norm(shape_kind: str, channels: int, config: Mapping[str, Any]) -> nn.Module:
    """Channel normalisation with a learned per-channel affine."""
    return ChannelNorm(shape_kind, channels, float(config["eps"]))


BUILTIN_BLUEPRINTS: Final = known_blueprints()
#: The built-in blueprints as registered at import (a user may re-register a name with `replace`).
_BUILTIN_RECIPES: Final = dict(_REGISTRY)


def is_builtin_blueprint(name: str) -> bool:
    """Whether `name` is registered as the blueprint esper-es ships under that name."""
    recipe = _BUILTIN_RECIPES.get(name)
    return recipe is not None and _REGISTRY.get(name) is recipe
