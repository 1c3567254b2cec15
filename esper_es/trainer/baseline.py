"""The static baseline of `train --baseline`: the same host, no seeds, same epochs and schedule.

What growth is measured against. The untrained host is no baseline (any training beats it);
this trains the host the run started from (same task, master seed, data order, optimizer and
learning-rate schedule) with no seed layer and no controller, into a throw-away database.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import attrs

from esper_es.config import RunConfig, SeedsConfig
from esper_es.trainer.api import built_in_trainer


@attrs.frozen
class Baseline:
    """The static host's end of training."""

    accuracy: float | None
    val_loss: float
    parameters: int
    epochs: int


def static_baseline(config: RunConfig, seed: int) -> Baseline:
    """Train `config`'s host static (no seeds, no controller) for the same epochs."""
    static = attrs.evolve(config, seeds=SeedsConfig(layers={}))
    with tempfile.TemporaryDirectory(prefix="esper-baseline-") as tmp:
        trainer = built_in_trainer(
            static, seed=seed, db_path=Path(tmp) / "baseline.db", controller=None
        )
        result = trainer.run()
        params = sum(p.numel() for p in trainer.model.parameters())
    return Baseline(result.accuracy_end, result.val_loss_end, params, result.epochs)
