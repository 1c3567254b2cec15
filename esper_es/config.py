"""The run config: one TOML file, defaults for everything, validated on load.

Validation walks the attrs classes itself rather than going through cattrs, so that every
problem names the full dotted key (`lifecycle.min_training_steps`) and an unknown key lists
the known ones; a bad config exits 2 and writes nothing.
"""

from __future__ import annotations

import math
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs

from esper_es.core.config import LifecycleConfig
from esper_es.errors import ConfigError


@attrs.frozen(slots=True)
class SimulateConfig:
    """The synthetic controller of `esper-es simulate`."""

    seeds_per_layer: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    """Seed slots per synthetic seed layer."""
    act_probability: float = attrs.field(
        default=0.5, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)]
    )
    """Chance that a seed gets a command at a step."""
    illegal_probability: float = attrs.field(
        default=0.02, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)]
    )
    """Chance that a command is a random one, usually illegal (to exercise refusals)."""
    ramp_steps: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    """Steps a grafting seed takes to ramp alpha to its target."""
    max_fossilized_fraction: float = attrs.field(
        default=0.5, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)]
    )
    """Above this share of fossilized slots the controller culls instead, so traffic goes on."""


@attrs.frozen(slots=True)
class RunConfig:
    """Everything a run is configured by; recorded whole in `RunStarted`."""

    lifecycle: LifecycleConfig = attrs.field(factory=LifecycleConfig)
    simulate: SimulateConfig = attrs.field(factory=SimulateConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain JSON-able dict."""
        return attrs.asdict(self)


C = TypeVar("C")


def structure(cls: type[C], data: Mapping[str, Any], prefix: str = "") -> C:
    """Build attrs class `cls` from `data`, refusing unknown keys and wrong types by name."""
    if not isinstance(data, Mapping):
        raise ConfigError(prefix.rstrip(".") or "(top level)", "expected a table")
    fields = {f.name: f for f in attrs.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(f"{prefix}{key}", f"unknown key; known keys: {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        bad = next((n for n in kwargs if n in str(exc)), None)
        raise ConfigError(f"{prefix}{bad}" if bad else prefix.rstrip("."), str(exc)) from None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if attrs.has(hint):
        return structure(hint, value, key + ".")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(key, f"expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    return value


def load_config(path: str | Path | None) -> RunConfig:
    """Load and validate a TOML run config; no path gives the defaults."""
    if path is None:
        return RunConfig()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(p), "config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), f"not valid TOML: {exc}") from None
    return config_from_dict(data)


def config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    """Validate a config given as a dict (e.g. the one recorded in `RunStarted`)."""
    return structure(RunConfig, data)
