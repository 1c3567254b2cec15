"""What a run did, as `train` returns it and `esper-es train --json` prints it."""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import attrs

from esper_es.nn.fingerprint import model_fingerprint

if TYPE_CHECKING:
    from esper_es.trainer.loop import Trainer


@attrs.frozen
class TrainResult:
    """What a run did: where it is, how well it does, what it grew."""

    run_id: str
    branch: str
    head_seq: int
    fingerprint: str
    accuracy_start: float | None
    accuracy_end: float | None
    val_loss_start: float
    val_loss_end: float
    seeds: dict[str, int]
    events: int
    db: str
    steps: int
    epochs: int
    interrupted: bool
    seconds: float
    diverged: str | None = None
    """Why the run diverged (a non-finite loss), if it did: it stopped there."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (what `esper-es train --json` prints)."""
        return attrs.asdict(self)


def result_of(trainer: Trainer, interrupted: bool, started: float) -> TrainResult:
    """The `TrainResult` of `trainer` as it stands now."""
    assert trainer.db is not None and trainer.bus is not None
    stages = Counter(s.stage.value for s in trainer._all_seed_states())
    head = trainer.db.head_seq(trainer.bus.branch)
    return TrainResult(
        run_id=trainer.run_id,
        branch=trainer.bus.branch,
        head_seq=head,
        fingerprint=model_fingerprint(trainer.model),
        accuracy_start=trainer.val_accuracy_history[0] if trainer.val_accuracy_history else None,
        accuracy_end=trainer.val_accuracy_history[-1] if trainer.val_accuracy_history else None,
        val_loss_start=trainer.val_loss_history[0],
        val_loss_end=trainer.val_loss_history[-1],
        seeds=dict(sorted(stages.items())),
        events=head,
        db=trainer.db.location,
        steps=trainer.step,
        epochs=trainer.epoch,
        interrupted=interrupted,
        seconds=time.perf_counter() - started,
        diverged=trainer.divergence,
    )
