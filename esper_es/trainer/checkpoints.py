"""Checkpoints and snapshots of a trainer: what `Checkpointed` records, and what a resume needs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from esper_es.core import events as ev
from esper_es.nn.fingerprint import TensorBytes, fingerprint_with_digests, optimizer_fingerprint
from esper_es.runtime.rng import capture_rng_state, digest_of, encode_rng_state
from esper_es.trainer.snapshots import write_snapshot

if TYPE_CHECKING:
    from esper_es.trainer.loop import Trainer


def checkpoint_event(
    trainer: Trainer, epoch: int, *, snapshot: bool, phase: str = "facts"
) -> ev.Checkpointed:
    """The `Checkpointed` of the trainer's state now, with a snapshot written when asked.

    Its fingerprints describe the model and optimizer after this step's update, before the
    boundary's lifecycle changes; the snapshot (when due and the trainer writes them) is
    taken at the same moment.
    """
    assert trainer.db is not None
    # Captured once for the snapshot and the digests: nothing below draws from an RNG.
    rng = capture_rng_state()
    # The model's and the optimizer's state, taken and read once for the snapshot and the
    # fingerprints (B2): nothing changes them within this function.
    model_state = trainer.model.state_dict()
    optimizer_state = trainer.optimizer.state_dict()
    data = TensorBytes()
    key = None
    if snapshot and trainer.writes_snapshots:
        key = write_snapshot(
            trainer.db,
            model=trainer.model,
            optimizer=trainer.optimizer,
            rng_state=encode_rng_state(rng),
            position={"epoch": epoch, "step": trainer.step},
            extra=snapshot_extra(trainer, phase),
            grads={n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None},
            taken=(model_state, optimizer_state, data),
        ).key
    fingerprint, tensors = fingerprint_with_digests(model_state, data)
    if trainer.ranks is not None:
        trainer.ranks.agree(fingerprint)
    return ev.Checkpointed(
        epoch=epoch,
        step=trainer.step,
        fingerprint=fingerprint,
        optimizer_fingerprint=optimizer_fingerprint(trainer.optimizer, data, optimizer_state),
        rng=digest_of(rng),
        snapshot=key,
        tensors=tensors,
    )


def snapshot_extra(trainer: Trainer, phase: str) -> dict[str, Any]:
    """The trainer's own state a resume needs besides weights, optimizer and RNG.

    `phase` says what of the boundary at this step is done: `facts` (a checkpoint taken
    while the boundary's facts are built: its lifecycle part is still to come) or `after`
    (the whole boundary, e.g. at a Ctrl-C stop).
    """
    return {
        "phase": phase,
        "batches_done": trainer.batches_done,
        "epoch_losses": list(trainer.epoch_losses),
        "train_loss_history": trainer.train_loss_history,
        "val_loss_history": trainer.val_loss_history,
        "val_accuracy_history": trainer.val_accuracy_history,
        "last_decision_step": trainer.last_decision_step,
        "decisions_this_epoch": trainer.decisions_this_epoch,
        "recent_losses": list(trainer.recent_losses),
        "contributions": dict(sorted(trainer.driver.contributions.items())),
        "signals": {
            seed: [s.first, s.ema_with, s.ema_without, s.updates]
            for seed, s in sorted(trainer.seed_telemetry.signals.items())
        },
    }
