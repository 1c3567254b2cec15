"""One optimizer step of the trainer: the host's pass, the seeds' own pass, telemetry."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from esper_es.core.lifecycle import Stage
from esper_es.nn.modes import set_mode
from esper_es.nn.resumable import capturing
from esper_es.runtime import dynamo_free
from esper_es.trainer.schedule import apply_lr, lr_factor

if TYPE_CHECKING:
    from esper_es.trainer.loop import Trainer

Batch = Any


def train_step(t: Trainer, batch: Batch) -> float:
    """One optimizer step on `batch`; returns its loss (a non-finite one marks divergence)."""
    _train_mode(t)
    t.optimizer.zero_grad(set_to_none=True)
    training = t.own_pass.training_seeds(t)
    with capturing(t.own_pass.start_points(t, training)) as starts:
        loss = t.loss_fn(t.model, batch)
    loss.backward()  # type: ignore[no-untyped-call]
    every = t.config.driver.observe_every
    observing = t.measures_telemetry and (t.step + 1) % every == 0
    signals: list[tuple[str, float]] = []
    without = math.nan
    if t.config.train.seed_training == "own_loss":
        shared = observing and t.config.driver.signal_pass == "shared"
        without, signals = t.own_pass.run(t, batch, training, starts, measure=shared)
        observing = observing and not shared
    schedule = t.config.train
    if schedule.lr_schedule != "constant":
        horizon = schedule.epochs * t.steps_per_epoch()
        factor = lr_factor(
            schedule.lr_schedule, t.step, horizon, schedule.lr_warmup_steps, schedule.lr_min_factor
        )
        apply_lr(t.optimizer, factor)
    if t.ranks is not None:
        loss = t.ranks.reduce_step(loss)
    dynamo_free.step(t.optimizer)
    value = float(loss.detach())
    if not math.isfinite(value):
        # Nothing after this can be recorded faithfully (losses go into canonical JSON,
        # which has no NaN): stop at this boundary instead (`boundary.diverged_stop`).
        t.divergence = t.divergence or f"training loss {value} at step {t.step + 1}"
        return value
    t.recent_losses.append(value)
    for seed, with_seed in signals:
        t.seed_telemetry.record(seed, with_seed, without)
    if observing:
        seeds = [
            f"{layer.name}/{i}"
            for layer in t.layers.values()
            for i in layer.kernel_slots(Stage.TRAINING)
        ]
        t.seed_telemetry.observe_all(t.model, seeds, batch, t.loss_fn, t.own_pass.output_loss)
    return value


def _train_mode(t: Trainer) -> None:
    """Put the model in training mode, unless it is known to be in it already.

    `Module.train()` walks every module through `__setattr__` (~21 000 calls in a default
    run): it runs when the architecture changed (only projecting events changes it, which
    moves `projector.last_seq`) or the model was put in eval mode. Every pass that switches
    modes inside a step or a boundary (validation, probes, the seeds' own pass) restores them.
    """
    seq = t.projector.last_seq
    if t.train_mode_at != seq or not t.model.training:
        set_mode(t.model, True)
        t.train_mode_at = seq
