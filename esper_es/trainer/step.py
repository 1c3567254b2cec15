"""One optimizer step of the trainer: the host's pass, the seeds' own pass, telemetry."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from esper_es.core.lifecycle import Stage
from esper_es.runtime import dynamo_free
from esper_es.trainer.schedule import apply_lr, lr_factor

if TYPE_CHECKING:
    from esper_es.trainer.loop import Trainer

Batch = Any


def train_step(t: Trainer, batch: Batch) -> float:
    """One optimizer step on `batch`; returns its loss (a non-finite one marks divergence)."""
    _train_mode(t)
    t.optimizer.zero_grad(set_to_none=True)
    loss = t.loss_fn(t.model, batch)
    loss.backward()  # type: ignore[no-untyped-call]
    every = t.config.driver.observe_every
    observing = t.measures_telemetry and (t.step + 1) % every == 0
    signals: list[tuple[str, float]] = []
    without = math.nan
    if t.config.train.seed_training == "own_loss":
        shared = observing and t.config.driver.signal_pass == "shared"
        without, signals = train_seeds_on_own_loss(t, batch, measure=shared)
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
        t.seed_telemetry.observe_all(t.model, seeds, batch, t.loss_fn)
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
        t.model.train()
        t.train_mode_at = seq


def train_seeds_on_own_loss(
    t: Trainer, batch: Batch, measure: bool = False
) -> tuple[float, list[tuple[str, float]]]:
    """Give each TRAINING kernel the gradient of the loss with it blended at alpha 1.

    The straight-through gradient `isolation.isolated` hands a TRAINING kernel is dL/dh at
    the host's own activation h, which the kernel's output never moves: with no feedback the
    kernel keeps following it (measured on digits: the seed's paired advantage goes
    negative, i.e. blending it would hurt). So it is replaced by the gradient of the seed's
    own loss, L(h + k(h)), taken with respect to the kernel's parameters only
    (`autograd.grad` accumulates nothing into the host's `.grad`, and the pass runs in eval
    mode, so batch-norm statistics are not touched): the host's outputs and gradients stay
    exactly as without the seed (L8).

    With `measure` it also returns the seed signals' measurement of this batch (`driver.
    signal_pass = "shared"`): the loss of the model as it stands, and each seed's own loss,
    which is the value this pass computes anyway. Measuring them after the step instead costs
    one more forward pass per seed; the shared pass needs one in all (the loss without).
    """
    training = [(ly, i) for ly in t.layers.values() for i in ly.kernel_slots(Stage.TRAINING)]
    signals: list[tuple[str, float]] = []
    without = math.nan
    if not training:
        return without, signals
    modes = [(m, m.training) for m in t.model.modules()]
    try:
        t.model.eval()
        if measure:
            # TRAINING kernels are out of the forward pass here (`isolated_training` is off).
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                without = float(t.loss_fn(t.model, batch))
        for layer, i in training:
            kernel = layer.kernel(i)
            assert kernel is not None  # a TRAINING slot holds its kernel (L4)
            params = [p for p in kernel.parameters() if p.requires_grad]
            with layer.override_alphas({i: 1.0}):
                own = t.loss_fn(t.model, batch)
            if measure:
                signals.append((layer.seed_ids()[i], float(own.detach())))
            grads = torch.autograd.grad(own, params, allow_unused=True)
            for p, g in zip(params, grads, strict=True):
                p.grad = None if g is None else g.detach()
    finally:
        for m, was in modes:
            m.training = was
    return without, signals
