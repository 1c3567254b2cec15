"""Your own model as a *run factory*: what it returns, how it is called, how it is found again.

A run factory is a function of no arguments that builds everything a run of your own host
needs besides its config and seed, and returns it as a `TrainSpec` (or a dict of the same
keys). It can live in any importable module; its import path `module:function` is what a run
records (`RunStarted.host.factory`) so that `esper-es replay|resume|rollback` can rebuild the
host, the data and the loss from the command line:

```python
# my_pkg/runs.py
def make_run() -> TrainSpec:
    x, y = load_my_data()
    return TrainSpec(
        host=MyNet(), example_input=x[:2], seed_layers={"block1": 2},
        train_data=(x[:800], y[:800]), val_data=(x[800:], y[800:]),
        loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]),
    )
```

`train("my_pkg.runs:make_run", db_path=..., seed=0)` (or `train(make_run, ...)`) calls it with
the global RNGs seeded from the master seed (`seed_everything`), so the host's initial weights
and anything else it draws are the same for the same seed, run after run. Whatever the factory
does, a replay never depends on it for the weights: they come from the log (SPEC §5).
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from torch import nn

from esper_es.controller import Controller
from esper_es.errors import HostFactoryError
from esper_es.runtime.rng import seed_everything
from esper_es.trainer.loop import (
    _DEFAULT,
    LossFn,
    MetricFn,
    OptimizerFactory,
    TrainData,
    ValData,
)


@attrs.frozen(kw_only=True)
class TrainSpec:
    """Everything a run of your own host needs besides config and seed (what a factory returns)."""

    host: nn.Module
    train_data: TrainData
    val_data: ValData
    loss_fn: LossFn
    example_input: Any
    seed_layers: Mapping[str, int] | None = None
    metric_fn: MetricFn | None = None
    optimizer_factory: OptimizerFactory | None = None
    controller: Controller | None = _DEFAULT
    dataset_fingerprint: str | None = None


#: What `train`'s first argument may be: a host, a function building one or a whole
#: `TrainSpec` (or dict), or the import path `module:function` of such a function.
HostOrFactory = nn.Module | Callable[[], Any] | str

SPEC_FIELDS = tuple(f.name for f in attrs.fields(TrainSpec))
_REQUIRED = ("train_data", "val_data", "loss_fn", "example_input")
#: The optional fields' defaults: `train` may fill what a factory's spec left at them.
_OPTIONAL: dict[str, Any] = {
    f.name: f.default for f in attrs.fields(TrainSpec) if f.default is not attrs.NOTHING
}


def factory_path(fn: Callable[..., Any]) -> str | None:
    """`module:qualname` of `fn` if importing that gives `fn` back, else None.

    A lambda, a nested function or a function of `__main__` cannot be found by another
    process, so nothing is recorded for them.
    """
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    path = f"{module}:{qualname}"
    try:
        return path if load_factory(path) is fn else None
    except HostFactoryError:
        return None


def load_factory(path: str) -> Callable[[], Any]:
    """The function at import path `module:function` (the current directory is importable)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise HostFactoryError(
            f"factory {path!r} is not an import path of the form module:function "
            "(e.g. my_pkg.runs:make_run)"
        )
    # As `python -m` would: a factory next to the user's scripts is found from the CLI too.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise HostFactoryError(
            f"factory {path!r}: cannot import module {module_name!r} ({exc}); is its package "
            "installed or on PYTHONPATH?"
        ) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise HostFactoryError(f"factory {path!r}: {module_name} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise HostFactoryError(f"factory {path!r} is a {type(obj).__name__}, not a function")
    return obj  # type: ignore[no-any-return]


def call_factory(fn: Callable[[], Any], master_seed: int, name: str) -> nn.Module | TrainSpec:
    """Call a host or run factory with the global RNGs seeded from `master_seed`."""
    seed_everything(master_seed)
    made = fn()
    if isinstance(made, nn.Module | TrainSpec):
        return made
    if isinstance(made, Mapping):
        unknown = sorted(set(made) - set(SPEC_FIELDS))
        if unknown:
            raise HostFactoryError(
                f"factory {name} returned unknown keys {', '.join(unknown)}; a TrainSpec has "
                f"{', '.join(SPEC_FIELDS)}"
            )
        try:
            return TrainSpec(**made)
        except TypeError as exc:
            raise HostFactoryError(f"factory {name} returned an incomplete spec: {exc}") from exc
    raise HostFactoryError(
        f"factory {name} returned a {type(made).__name__}; it must return an nn.Module, a "
        "TrainSpec or a dict of TrainSpec's fields"
    )


def resolve_spec(
    host: HostOrFactory, given: Mapping[str, Any], *, seed: int, factory: str | None
) -> tuple[TrainSpec, str | None]:
    """The run's `TrainSpec` and the factory path to record, from `train`'s arguments.

    `given` holds the keyword arguments passed explicitly (not None); a field both a
    factory's spec and `given` set is refused rather than silently picked.
    """
    path = factory
    if isinstance(host, str):
        fn: Callable[[], Any] = load_factory(host)
        path = path or host
        host = fn
    if isinstance(host, nn.Module):
        made: nn.Module | TrainSpec = host
    elif callable(host):
        name = path or str(getattr(host, "__qualname__", repr(host)))
        made = call_factory(host, seed, name)
        if isinstance(made, TrainSpec) and path is None:
            # Only a factory that builds the whole run (data, loss, ...) can rebuild it.
            path = factory_path(host)
            if path is None:
                warnings.warn(
                    f"run factory {name} has no import path another process can use (a "
                    "lambda, a nested function or a script's __main__): the run records none, "
                    "so the CLI will need --factory; pass train('module:function', ...) instead",
                    stacklevel=3,
                )
    else:
        raise TypeError(f"host must be an nn.Module, a factory or its import path, not {host!r}")
    if isinstance(made, TrainSpec):
        fields = {f: getattr(made, f) for f in SPEC_FIELDS}
        both = sorted(k for k in given if fields[k] is not _OPTIONAL.get(k, given))
        if both:
            raise TypeError(f"{', '.join(both)} given both by the factory's spec and to train")
        fields.update(given)
        return TrainSpec(**fields), path
    missing = [k for k in _REQUIRED if k not in given]
    if missing:
        raise TypeError(f"train() of a host needs {', '.join(missing)} (or a factory's spec)")
    return TrainSpec(host=made, **{k: v for k, v in given.items() if k in SPEC_FIELDS}), path
