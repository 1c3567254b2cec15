"""The trainer commits in the background (B2): a failed commit still stops the run, typed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

from esper_es.config import RunConfig
from esper_es.errors import StorageError
from esper_es.store import RunDatabase, verify
from esper_es.trainer.api import built_in_trainer


def _no_seeds(epochs: int) -> RunConfig:
    c = RunConfig()
    return attrs.evolve(
        c,
        train=attrs.evolve(c.train, epochs=epochs),
        seeds=attrs.evolve(c.seeds, layers={}),
    )


def test_a_failed_commit_stops_the_run_with_its_typed_error(tmp_path: Path) -> None:
    db_path = tmp_path / "run.db"
    trainer = built_in_trainer(_no_seeds(3), seed=0, db_path=db_path, controller=None)
    per_epoch = trainer.steps_per_epoch()

    def fill_the_disk(t: Any, step: int) -> None:
        # Right after epoch 1's boundary: its commit may be in flight; from here on the file
        # cannot grow, so epoch 2's commit (with its snapshot's blobs) fails in the background.
        if step == per_epoch:
            pages = t.db.connection.execute("PRAGMA page_count").fetchone()[0]
            t.db.connection.execute(f"PRAGMA max_page_count = {pages}")

    trainer.on_step = fill_the_disk
    with pytest.raises(StorageError, match="disk is full"):
        trainer.run()
    # The file holds everything up to epoch 1's boundary, whole, and verifies.
    assert verify(db_path).events > 0
    with RunDatabase.open(db_path, readonly=True) as db:
        last = list(db.read())[-1]
    assert last.event.TYPE == "Checkpointed" and last.event.epoch == 1
