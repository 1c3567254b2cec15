"""One optimizer step of the trainer: the host's pass, the seeds' own pass, telemetry."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from esper_es.nn.modes import set_mode
from esper_es.nn.resumable import capturing
from esper_es.runtime import dynamo_free
from esper_es.trainer.own_pass import training_slots
from esper_es.trainer.schedule import apply_lr, lr_factor

if TYPE_CHECKING:
    from esper_es.trainer.loop import Trainer

Batch = Any


def train_step(t: Trainer, batch: Batch) -> float:
    """One optimizer step on `batch`; returns its loss (a non-finite one marks divergence)."""
    _train_mode(t)
    t.optimizer.zero_grad(set_to_none=True)
    own = t.own_pass
    training = own.training_seeds(t)
    if training:
        with capturing(own.start_points(t, training)) as starts:
            loss = t.loss_fn(t.model, batch)
    else:
        # Most steps of a run train no seed. Every call a step makes beyond the plain loop's
        # costs ~1-3 µs on the caches the step's kernels left cold: this path makes none that
        # it does not need (B2, issue 12: ~25 µs a width-4 step before).
        starts = {}
        loss = t.loss_fn(t.model, batch)
    loss.backward()  # type: ignore[no-untyped-call]
    driver = t.config.driver
    observing = t.measures_telemetry and (t.step + 1) % driver.observe_every == 0
    signals: list[tuple[str, float]] = []
    without = math.nan
    if training:  # (`training_seeds` is empty unless the seeds train on their own loss)
        shared = observing and driver.signal_pass == "shared"
        without, signals = own.run(t, batch, training, starts, measure=shared)
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
    value = loss.item()
    if not math.isfinite(value):
        # Nothing after this can be recorded faithfully (losses go into canonical JSON,
        # which has no NaN): stop at this boundary instead (`boundary.diverged_stop`).
        t.divergence = t.divergence or f"training loss {value} at step {t.step + 1}"
        return value
    t.recent_losses.append(value)
    for seed, with_seed in signals:
        t.seed_telemetry.record(seed, with_seed, without)
    if observing and t.layers:
        # Every TRAINING seed, whether or not it trains on its own loss.
        seeds = [f"{layer.name}/{i}" for layer, i in training or training_slots(t)]
        t.seed_telemetry.observe_all(t.model, seeds, batch, t.loss_fn, own.output_loss)
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
