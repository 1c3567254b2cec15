"""A run killed before its first commit leaves a database with no event: creating a run at
that path again replaces it instead of refusing the path for good (issue 10); a database
holding any event, or any other file, is still refused and left untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from esper_es.core import events as ev
from esper_es.core.envelope import NewEvent
from esper_es.errors import DatabaseLocked, NotARunDatabase
from esper_es.store.database import RunDatabase


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_database_without_events_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with RunDatabase.create(path, "run-killed") as db:
        db.put_blob(b"an orphan blob written before the first commit")
    with RunDatabase.create(path, "run-again") as db:
        assert db.run_id == "run-again"
        assert db.connection.execute("SELECT count(*) FROM blobs").fetchone()[0] == 0


def test_a_database_with_events_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with RunDatabase.create(path, "run-1") as db:
        db.append(
            "run", 0, [NewEvent(ev.TrainingStopped(epoch=0, step=0, reason="completed"), "e")]
        )
    before = _digest(path)
    with pytest.raises(NotARunDatabase, match="already exists"):
        RunDatabase.create(path, "run-2")
    assert _digest(path) == before


def test_other_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("mine")
    with pytest.raises(NotARunDatabase, match="already exists"):
        RunDatabase.create(path, "run-1")
    assert path.read_text() == "mine"


def test_an_empty_database_with_a_live_writer_is_not_taken(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with RunDatabase.create(path, "run-live"), pytest.raises(DatabaseLocked):
        RunDatabase.create(path, "run-other")
