"""Which host a re-execution builds (SPEC §6 "Your own model from the command line").

A run records in `RunStarted.host` how its host was built: a built-in task, or a custom host
with the import path `module:function` of its run factory (`esper_es.trainer.spec`), when it
had one. `resolve_factory` turns that (or an override: `--factory`, or a Python
`trainer_factory`) into the `TrainerFactory` a `Session` calls; a custom host with neither is
refused with exit 2 naming `--factory`, never rebuilt as a built-in host. Logs from before
`RunStarted` v2 recorded nothing: they rebuild the built-in host of their config, as then.

`prepare_trainer` then gives the built trainer what the log says about its start: the host
record (so the recomputed `RunStarted` matches) and the initial weights, restored into the
host before the first step (`esper_es.trainer.initial_weights`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from esper_es.config import RunConfig
from esper_es.core import events as ev
from esper_es.errors import HostFactoryError
from esper_es.store.protocol import RunStore
from esper_es.trainer.initial_weights import restore_initial_weights
from esper_es.trainer.loop import Trainer

#: Builds the (not yet run) trainer of a recorded run: `(config, master_seed, db_path)`.
TrainerFactory = Callable[[RunConfig, int, str | Path], Trainer]


def built_in_factory(config: RunConfig, master_seed: int, db_path: str | Path) -> Trainer:
    """The trainer of a built-in task (what `esper-es train` ran)."""
    from esper_es.trainer.api import built_in_trainer

    return built_in_trainer(config, seed=master_seed, db_path=db_path)


def run_factory(path: str) -> TrainerFactory:
    """The `TrainerFactory` of the run factory at import path `module:function`."""
    from esper_es.trainer.api import trainer_for
    from esper_es.trainer.spec import TrainSpec, call_factory, load_factory

    fn = load_factory(path)

    def make(config: RunConfig, master_seed: int, db_path: str | Path) -> Trainer:
        spec = call_factory(fn, master_seed, path)
        if not isinstance(spec, TrainSpec):
            raise HostFactoryError(
                f"factory {path} returned only a host; to rebuild a run it must return a "
                "TrainSpec (host, data, loss_fn, example_input, ...), see docs/training.md"
            )
        return trainer_for(spec, config=config, seed=master_seed, db_path=db_path, factory=path)

    return make


def resolve_factory(
    started: ev.RunStarted, override: TrainerFactory | None = None
) -> TrainerFactory:
    """The factory that rebuilds `started`'s run: the override, else what the run recorded."""
    if override is not None:
        return override
    host: dict[str, Any] | None = started.host
    if host is None or host.get("kind") == "built_in":
        return built_in_factory
    path = host.get("factory")
    if path:
        return run_factory(str(path))
    raise HostFactoryError(
        f"run {started.run_id} trained a custom host and recorded no factory to rebuild it: "
        "pass --factory module:function (a function of no arguments returning the run's "
        "TrainSpec, see docs/training.md), or from Python replay/resume/rollback(..., "
        "trainer_factory=...)"
    )


def prepare_trainer(trainer: Trainer, db: RunStore, started: ev.RunStarted) -> None:
    """Give a freshly built trainer the run's recorded start: host record, initial weights."""
    # A log from before RunStarted v2 recorded no host: the recomputed RunStarted must not.
    trainer.host_source = None if started.host is None else dict(started.host)
    trainer.initial_weights = None
    if started.initial_weights is not None:
        trainer.initial_weights = dict(started.initial_weights)
        restore_initial_weights(db, started.initial_weights, trainer.model)
