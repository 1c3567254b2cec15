"""The public Python API: wrap your own host, bring your data, optimizer and controller.

```python
from esper_es.trainer import train
result = train(
    MyNet,                                      # a function building the host (or a host)
    example_input=torch.zeros(2, 3, 32, 32),    # one batch of its input, for placement
    seed_layers={"block1": 2, "block2": 2},     # module path -> seed slots after it
    train_data=(x_train, y_train),              # tensors, or epoch -> batches, or batches
    val_data=(x_val, y_val),
    loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]),
    metric_fn=lambda m, b: float((m(b[0]).argmax(1) == b[1]).float().mean()),
    optimizer_factory=lambda params: torch.optim.AdamW(params, lr=1e-3),
    controller=HeuristicController(),           # or your own `decide(telemetry)`, or None
    db_path="runs/mine.db",
    seed=0, epochs=5,
)
```

The first argument is the host, a function building it (called with the global RNGs seeded
from `seed`, so the same seed gives the same initial weights), or a *run factory* returning a
whole `TrainSpec` (or its import path `module:function`, which the run records so the CLI can
replay it; see `esper_es.trainer.spec`).

`built_in(config, seed, db_path)` runs one of the built-in tasks (what `esper-es train` does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from esper_es.config import RunConfig
from esper_es.controller import Controller
from esper_es.trainer.loop import (
    _DEFAULT,
    LossFn,
    MetricFn,
    OptimizerFactory,
    StepHook,
    TrainData,
    Trainer,
    ValData,
)
from esper_es.trainer.result import TrainResult
from esper_es.trainer.spec import HostOrFactory, TrainSpec, resolve_spec
from esper_es.trainer.tasks import build_task


def make_trainer(
    host: HostOrFactory,
    *,
    db_path: str | Path,
    train_data: TrainData | None = None,
    val_data: ValData | None = None,
    loss_fn: LossFn | None = None,
    example_input: Any = None,
    seed_layers: Mapping[str, int] | None = None,
    metric_fn: MetricFn | None = None,
    optimizer_factory: OptimizerFactory | None = None,
    controller: Controller | None = _DEFAULT,
    config: RunConfig | None = None,
    seed: int = 0,
    dataset_fingerprint: str | None = None,
    on_step: StepHook | None = None,
    progress: bool = False,
    factory: str | None = None,
) -> Trainer:
    """A `Trainer` for your own host (see `train`); call `.run()` on it."""
    given: dict[str, Any] = {
        k: v
        for k, v in (
            ("train_data", train_data), ("val_data", val_data), ("loss_fn", loss_fn),
            ("example_input", example_input), ("seed_layers", seed_layers),
            ("metric_fn", metric_fn), ("optimizer_factory", optimizer_factory),
            ("dataset_fingerprint", dataset_fingerprint),
        )
        if v is not None
    }  # fmt: skip
    if controller is not _DEFAULT:
        given["controller"] = controller
    spec, path = resolve_spec(host, given, seed=seed, factory=factory)
    return trainer_for(
        spec, config=config, seed=seed, db_path=db_path, factory=path,
        on_step=on_step, progress=progress,
    )  # fmt: skip


def trainer_for(
    spec: TrainSpec,
    *,
    config: RunConfig | None,
    seed: int,
    db_path: str | Path,
    factory: str | None = None,
    on_step: StepHook | None = None,
    progress: bool = False,
) -> Trainer:
    """The `Trainer` of a resolved `TrainSpec`; `factory` is the import path to record."""
    config = config or RunConfig()
    if spec.seed_layers is not None:
        # Only the placement changes: blueprints and kernel configs stay as configured.
        layers = dict(spec.seed_layers)
        config = attrs.evolve(config, seeds=attrs.evolve(config.seeds, layers=layers))
    return Trainer(
        spec.host,
        config=config,
        master_seed=seed,
        db_path=db_path,
        train_data=spec.train_data,
        val_data=spec.val_data,
        loss_fn=spec.loss_fn,
        metric_fn=spec.metric_fn,
        example_input=spec.example_input,
        optimizer_factory=spec.optimizer_factory,
        controller=spec.controller,
        dataset_fingerprint=spec.dataset_fingerprint,
        on_step=on_step,
        progress=progress,
        host_source={"kind": "custom", "factory": factory},
    )


def train(
    host: HostOrFactory,
    *,
    db_path: str | Path,
    train_data: TrainData | None = None,
    val_data: ValData | None = None,
    loss_fn: LossFn | None = None,
    example_input: Any = None,
    seed_layers: Mapping[str, int] | None = None,
    metric_fn: MetricFn | None = None,
    optimizer_factory: OptimizerFactory | None = None,
    controller: Controller | None = _DEFAULT,
    config: RunConfig | None = None,
    seed: int = 0,
    epochs: int | None = None,
    dataset_fingerprint: str | None = None,
    on_step: StepHook | None = None,
    progress: bool = False,
    factory: str | None = None,
) -> TrainResult:
    """Train `host` with seed layers at `seed_layers`, recording the run in `db_path`.

    `host` is an `nn.Module`; or a function of no arguments building it, called with the
    global RNGs seeded from `seed` (same seed, same initial weights); or a run factory
    returning a `TrainSpec` (host, data, loss, ...), or its import path `module:function`.
    The run records a factory's import path when it has one (`factory=` names it for a host
    passed directly), so `esper-es replay|resume|rollback` can rebuild the run.

    `controller` defaults to the heuristic controller of `config.controller`; pass `None` for
    none (seeds then change only by decisions you submit, e.g. from `on_step` with
    `trainer.submit(decision)`), or any object with `decide(telemetry) -> [decisions]`.
    """
    trainer = make_trainer(
        host,
        train_data=train_data,
        val_data=val_data,
        loss_fn=loss_fn,
        example_input=example_input,
        db_path=db_path,
        seed_layers=seed_layers,
        metric_fn=metric_fn,
        optimizer_factory=optimizer_factory,
        controller=controller,
        config=config,
        seed=seed,
        dataset_fingerprint=dataset_fingerprint,
        on_step=on_step,
        progress=progress,
        factory=factory,
    )
    return trainer.run(epochs)


def built_in_trainer(
    config: RunConfig,
    *,
    seed: int,
    db_path: str | Path,
    controller: Controller | None = _DEFAULT,
    on_step: Callable[[Trainer, int], None] | None = None,
    progress: bool = False,
) -> Trainer:
    """A trainer for the built-in task `config.host.task` (what `esper-es train` runs)."""
    task = build_task(config, seed)
    return Trainer(
        task.host,
        config=config,
        master_seed=seed,
        db_path=db_path,
        train_data=(task.x_train, task.y_train),
        val_data=(task.x_val, task.y_val),
        loss_fn=task.loss_fn,
        metric_fn=task.metric_fn,
        loss_and_metric=task.loss_and_metric,
        example_input=task.example_input,
        controller=controller,
        dataset_fingerprint=task.fingerprint,
        on_step=on_step,
        progress=progress,
        host_source={"kind": "built_in", "task": config.host.task},
    )


def built_in(
    config: RunConfig, *, seed: int, db_path: str | Path, progress: bool = False
) -> TrainResult:
    """Train the built-in task of `config` and return the result."""
    return built_in_trainer(config, seed=seed, db_path=db_path, progress=progress).run()
