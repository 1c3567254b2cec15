"""A run whose user code makes decisions with the seed call shape from other threads.

`python user_decisions.py CONFIG DB [--hang-at STEP]` trains it; with `--hang-at` it prints
`ready` after that step's boundary and waits to be killed (a `kill -9` at a known point).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

from esper_es.config import RunConfig, config_from_dict
from esper_es.core.decisions import AdaptationDecision
from esper_es.trainer import Trainer, built_in_trainer

#: After the boundary of the step (key), a thread submits the decision (value); the hook waits
#: until it is queued, so it lands at the next boundary however the threads are scheduled.
DECISIONS = {
    9: AdaptationDecision(
        layer_name="layer2", adaptation_type="add_seed", parameters={"num_seeds": 1},
        reason="user: async call shape from a thread",
    ),
    11: AdaptationDecision(
        layer_name="layer1", adaptation_type="add_seed", parameters={"num_seeds": 1},
        reason="user: sync call shape from a thread",
    ),
}  # fmt: skip
USER_STEPS = (10, 12)
"""The boundaries the decisions are recorded at."""


def _call(trainer: Trainer, step: int, decision: AdaptationDecision) -> None:
    orchestrator = trainer.orchestrator
    assert orchestrator is not None
    if step % 2:
        coro = orchestrator.apply_architecture_modification(model=trainer.model, decision=decision)
        asyncio.run(coro)
    else:
        orchestrator.apply_architecture_modification_sync(trainer.model, decision)


def hook(hang_at: int | None = None) -> Any:
    """The `on_step` hook that starts the user threads (and, optionally, hangs)."""

    def on_step(trainer: Trainer, step: int) -> None:
        decision = DECISIONS.get(step)
        orchestrator = trainer.orchestrator
        if decision is not None and orchestrator is not None:
            threading.Thread(target=_call, args=(trainer, step, decision), daemon=True).start()
            while orchestrator.pending() == 0:
                time.sleep(0.001)
        if step == hang_at:
            print("ready", flush=True)
            time.sleep(600)

    return on_step


def factory(config: RunConfig, seed: int, path: Path) -> Trainer:
    """The run's trainer with the user hook (a `trainer_factory` for replay/resume/rollback)."""
    return built_in_trainer(config, seed=seed, db_path=path, on_step=hook())


if __name__ == "__main__":
    config = config_from_dict(tomllib.loads(Path(sys.argv[1]).read_text("utf-8")))
    hang = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--hang-at" else None
    built_in_trainer(config, seed=0, db_path=sys.argv[2], on_step=hook(hang)).run()
