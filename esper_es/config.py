"""The run config: one TOML file, defaults for everything, validated on load.

Validation walks the attrs classes itself rather than going through cattrs, so that every
problem names the full dotted key (`lifecycle.min_training_steps`) and an unknown key lists
the known ones; a bad config exits 2 and writes nothing. Sections are nested attrs classes;
tables of free keys (`seeds.layers`) are `dict[str, X]` fields, lists are `tuple[X, ...]`
fields, and choices are attrs `in_` validators, whose message names the key.

The defaults spell out the built-in run of `esper-es train` (see `configs/digits.toml`).
"""

from __future__ import annotations

import enum
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
from attrs import validators as v

from esper_es.controller import ControllerConfig
from esper_es.core.blending import BLEND_KINDS
from esper_es.core.config import LifecycleConfig
from esper_es.core.lr_schedule import LR_SCHEDULES
from esper_es.errors import ConfigError, ConfigFileError
from esper_es.numerics import MODES, NATIVE

_POSITIVE = [v.instance_of(int), v.ge(1)]
_NON_NEGATIVE = [v.instance_of(int), v.ge(0)]


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


def _seed_counts(_: object, attribute: attrs.Attribute[Any], value: dict[str, int]) -> None:
    for path, count in value.items():
        if not path:
            raise ValueError(f"{attribute.name}: a module path must not be empty")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(
                f"{attribute.name}.{path}: seeds per layer must be >= 1, got {count!r}"
            )


@attrs.frozen(slots=True)
class TrainConfig:
    """The optimisation: epochs, batches, optimizer, checkpoints and snapshots."""

    epochs: int = attrs.field(default=12, validator=_POSITIVE)
    """Epochs to train."""
    batch_size: int = attrs.field(default=32, validator=_POSITIVE)
    """Examples per mini-batch (the last batch of an epoch may be smaller)."""
    lr: float = attrs.field(default=0.03, validator=v.gt(0.0))
    """Learning rate of the host's parameters."""
    seed_lr: float = attrs.field(default=0.03, validator=v.gt(0.0))
    """Learning rate of every seed kernel's own param group."""
    optimizer: str = attrs.field(default="adam", validator=v.in_(("adam", "sgd")))
    """`adam` or `sgd` (with momentum 0.9)."""
    weight_decay: float = attrs.field(default=0.0, validator=v.ge(0.0))
    """L2 weight decay of every param group."""
    checkpoint_every_steps: int = attrs.field(default=0, validator=_NON_NEGATIVE)
    """Also record `Checkpointed` every this many steps (0: only at epoch ends)."""
    snapshot_every_epochs: int = attrs.field(default=1, validator=_NON_NEGATIVE)
    """Store a content-addressed snapshot every this many epochs (0: only the last one)."""
    controller_every_steps: int = attrs.field(default=15, validator=_NON_NEGATIVE)
    """Run the controller every this many steps, besides every epoch end (0: epoch ends only)."""
    seed_training: str = attrs.field(
        default="own_loss", validator=v.in_(("own_loss", "straight_through"))
    )
    """How a TRAINING seed learns: `own_loss` (the loss with it blended at alpha 1, host
    frozen) or `straight_through` (the host activation's gradient, `nn.isolation`)."""
    val_batch_size: int = attrs.field(default=512, validator=_POSITIVE)
    """Examples per batch when evaluating the validation set."""
    lr_schedule: str = attrs.field(default="one_cycle", validator=v.in_(LR_SCHEDULES))
    """Learning-rate schedule of every param group (`trainer.schedule`): `constant`, `cosine`
    (warm-up, then down to `lr_min_factor` over the run's epochs) or `one_cycle`."""
    lr_warmup_steps: int = attrs.field(default=0, validator=_NON_NEGATIVE)
    """`cosine`: steps of linear warm-up from 0 to the full rate."""
    lr_min_factor: float = attrs.field(default=0.0, validator=[v.ge(0.0), v.le(1.0)])
    """`cosine`/`one_cycle`: the rate at the end of the run, as a fraction of the base rate."""
    metrics_every_steps: int = attrs.field(default=1, validator=_NON_NEGATIVE)
    """Record the training loss and learning rate of every this many steps, in one
    `StepMetricsRecorded` per epoch (0: per-epoch metrics only)."""


@attrs.frozen(slots=True)
class HostConfig:
    """The built-in task and its host network."""

    task: str = attrs.field(default="digits", validator=v.in_(("digits", "text")))
    """`digits` (DigitsCNN on scikit-learn digits) or `text` (CharTransformer, next char)."""
    width: int = attrs.field(default=4, validator=_POSITIVE)
    """digits: channels of the CNN (B9's wide static host is 32)."""
    d_model: int = attrs.field(default=32, validator=_POSITIVE)
    """text: model width."""
    n_heads: int = attrs.field(default=2, validator=_POSITIVE)
    """text: attention heads."""
    n_blocks: int = attrs.field(default=2, validator=_POSITIVE)
    """text: transformer blocks."""
    window: int = attrs.field(default=32, validator=_POSITIVE)
    """text: characters per training window."""
    max_train_examples: int = attrs.field(default=0, validator=_NON_NEGATIVE)
    """Use only the first N training examples (0: all), e.g. for quick runs."""
    max_val_examples: int = attrs.field(default=0, validator=_NON_NEGATIVE)
    """Use only the first N validation examples (0: all)."""


@attrs.frozen(slots=True)
class SeedsConfig:
    """Where seed layers go and which blueprints may germinate there."""

    layers: dict[str, int] = attrs.field(
        factory=lambda: {"layer1": 2, "layer2": 2}, validator=_seed_counts
    )
    """Module path -> number of seed slots placed right after that module."""
    blueprints: tuple[str, ...] = ()
    """Blueprints allowed in every seed layer (empty: every registered blueprint that fits)."""
    kernel_config: dict[str, dict[str, Any]] = attrs.field(
        factory=lambda: {"conv3x3": {"expansion": 4.0}, "mlp": {"expansion": 8.0}}
    )
    """Blueprint name -> config overrides its kernels are built with; recorded in each
    `SeedGerminated` and checked against the blueprint library when training starts. The
    defaults make the width-bearing kernels wider than the narrow host they grow in
    (`expansion`: hidden width = the seed layer's channels x expansion), so seeds add capacity."""


@attrs.frozen(slots=True)
class BlendingConfig:
    """How a grafting seed's alpha ramps to its blend target (`core.blending.BlendSchedule`)."""

    kind: str = attrs.field(default="linear", validator=v.in_(BLEND_KINDS))
    """Ramp shape: linear, cosine or sigmoid."""
    ramp_steps: int = attrs.field(default=20, validator=_NON_NEGATIVE)
    """Steps from grafting start to the target (the target itself is per seed)."""


@attrs.frozen(slots=True)
class DriverConfig:
    """The lifecycle driver's own knobs (the gates' thresholds are in `[lifecycle]`)."""

    observe_every: int = attrs.field(default=2, validator=_POSITIVE)
    """Measure each TRAINING seed's own loss every this many steps."""
    signal_pass: str = attrs.field(default="shared", validator=v.in_(("shared", "separate")))
    """Where a TRAINING seed's own loss is measured under `seed_training = "own_loss"`:
    `shared`, in the pass that trains it, before the step, on a batch the kernel has not yet
    stepped on (one no-grad forward in all, for the loss without); `separate`, in no-grad
    forward passes of its own after the step (one per seed, plus the loss without).
    `separate` costs a width-4 default run ~8 % more time and ended 144 digits master seeds
    no more accurate (shared - separate: -0.006 pp, SE 0.051; width 64, 72 seeds: +0.015 pp,
    SE 0.077; docs/training.md). `straight_through` always measures separately."""
    diverged_ratio: float = attrs.field(default=2.0, validator=v.ge(0.0))
    """Cull a TRAINING seed as soon as it may leave TRAINING if the loss with it at full weight
    is still this many times the loss without it (EMAs): its kernel diverged or never learned
    (0: give it `training_patience` steps like any other)."""
    signal_decay: float = attrs.field(default=0.9, validator=[v.ge(0.0), v.lt(1.0)])
    """EMA decay of a seed's training signal."""
    training_patience: int = attrs.field(default=40, validator=_NON_NEGATIVE)
    """Cull a TRAINING seed whose signal has not improved this many steps after the minimum."""
    evaluation_steps: int = attrs.field(default=5, validator=_NON_NEGATIVE)
    """Steps in EVALUATING before the contribution is measured."""
    fine_tune_steps: int = attrs.field(default=30, validator=_NON_NEGATIVE)
    """Steps in FINE_TUNING before the contribution is re-measured."""
    instability_window: int = attrs.field(default=20, validator=[v.instance_of(int), v.ge(2)])
    """Recent training losses whose relative spread (std / mean) is the instability."""
    contribution_examples: int = attrs.field(default=512, validator=_POSITIVE)
    """Size of the fixed validation batch that contributions are measured on."""


@attrs.frozen(slots=True)
class RuntimeConfig:
    """Threads and determinism (SPEC §5)."""

    threads: int = attrs.field(default=1, validator=_POSITIVE)
    """torch intra-op threads; 1 reproduces exactly across machines with the same build."""
    interop_threads: int = attrs.field(default=0, validator=_NON_NEGATIVE)
    """torch inter-op threads (0: leave as the process has it)."""
    deterministic: bool = attrs.field(default=True, validator=v.instance_of(bool))
    """Deterministic algorithms and full-precision matmuls (and on CUDA, deterministic cuBLAS
    and cuDNN with TF32 off)."""
    device: str = attrs.field(default="cpu", validator=v.in_(("cpu", "cuda", "auto")))
    """Where the run trains: `cpu`, `cuda` (each rank on `cuda:{LOCAL_RANK}`), or `auto` (CUDA
    where available). A re-execution trains on the kind of device the run recorded."""


@attrs.frozen(slots=True)
class DeterminismConfig:
    """Which CPU code paths a run may use (SPEC §5, `esper_es.numerics`)."""

    numerics: str = attrs.field(default=NATIVE, validator=v.in_(MODES))
    """`native`: this CPU's fastest kernels, replays on the same CPU model only; `portable`:
    pinned AVX2 code paths, replays bit for bit on any x86-64 CPU with AVX2 and FMA."""


@attrs.frozen(slots=True)
class LibraryConfig:
    """The kernel library (docs/kernel-library.md): shared outcomes, ranking, compilation."""

    path: str | None = None
    """A kernel library database shared across runs (created if missing); none: this run only."""
    compile: bool = attrs.field(default=False, validator=v.instance_of(bool))
    """Compile kernels with `torch.compile` in a background thread (off: it does not pay on CPU)."""
    prior_mean: float = 0.0
    """Ranking: the contribution an untried blueprint is assumed to have."""
    prior_strength: float = attrs.field(default=1.0, validator=v.gt(0.0))
    """Ranking: how many outcomes the prior weighs."""
    exploration: float = attrs.field(default=0.01, validator=v.ge(0.0))
    """Ranking: the UCB bonus's scale (in contribution units)."""
    fossil_bonus: float = 0.0
    """Ranking: added to a fossilized kernel's contribution."""


@attrs.frozen(slots=True)
class RunConfig:
    """Everything a run is configured by; recorded whole in `RunStarted`."""

    train: TrainConfig = attrs.field(factory=TrainConfig)
    host: HostConfig = attrs.field(factory=HostConfig)
    seeds: SeedsConfig = attrs.field(factory=SeedsConfig)
    blending: BlendingConfig = attrs.field(factory=BlendingConfig)
    driver: DriverConfig = attrs.field(factory=DriverConfig)
    controller: ControllerConfig = attrs.field(factory=ControllerConfig)
    runtime: RuntimeConfig = attrs.field(factory=RuntimeConfig)
    determinism: DeterminismConfig = attrs.field(factory=DeterminismConfig)
    lifecycle: LifecycleConfig = attrs.field(factory=LifecycleConfig)
    simulate: SimulateConfig = attrs.field(factory=SimulateConfig)
    library: LibraryConfig = attrs.field(factory=LibraryConfig)

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
        # attrs validators name the field in their message ("'optimizer' must be in ...").
        text = str(exc)
        bad = next((n for n in kwargs if f"'{n}'" in text), None) or next(
            (n for n in kwargs if n in text), None
        )
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
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a table, got {value!r}")
        return {
            _coerce(key_hint, k, f"{key}.{k}"): _coerce(value_hint, item, f"{key}.{k}")
            for k, item in value.items()
        }
    if origin is tuple:
        args = typing.get_args(hint)
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(key, f"expected a list, got {value!r}")
        item_hint = args[0] if args else Any
        return tuple(_coerce(item_hint, item, f"{key}[{i}]") for i, item in enumerate(value))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            known = ", ".join(str(m.value) for m in hint)
            raise ConfigError(key, f"expected one of {known}, got {value!r}") from None
    return value


def load_config(path: str | Path | None) -> RunConfig:
    """Load and validate a TOML run config; no path gives the defaults."""
    if path is None:
        return RunConfig()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigFileError(str(p), "not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigFileError(str(p), f"cannot be read ({exc.__class__.__name__})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(str(p), f"not valid TOML: {exc}") from None
    return config_from_dict(data)


def config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    """Validate a config given as a dict (e.g. the one recorded in `RunStarted`)."""
    return structure(RunConfig, data)


#: Keys added to the config after runs were recorded without them, with the value that
#: reproduces what those runs did (a new default may differ: `metrics_every_steps` is on for
#: new runs, but a run recorded before it wrote no `StepMetricsRecorded`).
BEFORE_THE_KEY_EXISTED: Mapping[tuple[str, str], Any] = {
    ("train", "metrics_every_steps"): 0,
    # Issue 11: the schedule, the within-epoch plateau rule and outcome recording.
    ("train", "lr_schedule"): "constant",
    ("controller", "plateau_steps"): 0,
    ("controller", "record_outcomes"): False,
    # Issue 12: the seed signal measured in the seeds' own pass; diverging seeds culled early.
    ("driver", "signal_pass"): "separate",
    ("driver", "diverged_ratio"): 0.0,
}


def config_from_record(data: Mapping[str, Any]) -> RunConfig:
    """The config a run recorded in its `RunStarted`, as that run used it."""
    filled = {section: dict(values) for section, values in data.items()}
    for (section, key), value in BEFORE_THE_KEY_EXISTED.items():
        filled.setdefault(section, {}).setdefault(key, value)
    return config_from_dict(filled)
