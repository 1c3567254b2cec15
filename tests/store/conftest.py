"""Shared fixtures for the run database tests: a fresh database and one with a known history."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from store_history import HISTORY_LEN, RUN_ID, S0, S1, SEQ, fill_history, germinated  # noqa: F401

from esper_es.store import RunDatabase


def write_history(path: Path, padding: int = 0) -> None:
    """Create a run database at `path` holding the SEQ history, then `padding` blend events."""
    with RunDatabase.create(path, RUN_ID) as db:
        fill_history(db, padding)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where a test's run database goes."""
    return tmp_path / "run.db"


@pytest.fixture
def db(db_path: Path) -> Iterator[RunDatabase]:
    """A fresh, empty run database open for writing."""
    d = RunDatabase.create(db_path, RUN_ID)
    yield d
    d.close()


class History(NamedTuple):
    """A closed run database with a known history: its path, and its events' seqs by name."""

    path: Path
    seq: dict[str, int]
    length: int
    run_id: str


@pytest.fixture
def history(db_path: Path) -> History:
    """A closed run database holding the SEQ history and one blob."""
    write_history(db_path)
    return History(db_path, dict(SEQ), HISTORY_LEN, RUN_ID)


@pytest.fixture
def padded_history(db_path: Path) -> History:
    """The SEQ history followed by 400 blend events, so the file spans many pages."""
    write_history(db_path, padding=400)
    return History(db_path, dict(SEQ), HISTORY_LEN + 400, RUN_ID)


@pytest.fixture
def history_writer() -> Callable[[Path, int], None]:
    """`write_history(path, padding)`, for tests that need the history at their own path."""
    return write_history


@contextlib.contextmanager
def _raw(path: Path, *, restore_triggers: bool = True) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        triggers = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type='trigger'"
        ).fetchall()
        assert len(triggers) == 4
        for name, _ in triggers:
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute("BEGIN")
        yield conn
        conn.execute("COMMIT")
        if restore_triggers:
            for _, sql in triggers:
                conn.execute(sql)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


@pytest.fixture
def tamper() -> Callable[..., contextlib.AbstractContextManager[sqlite3.Connection]]:
    """`with tamper(path) as conn:` edits a closed database behind the store's back.

    The append-only triggers are dropped for the edit and, unless `restore_triggers=False`,
    put back afterwards, as a careful attacker would, so only the edit itself can give it away.
    """
    return _raw
