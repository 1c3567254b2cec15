"""The writer's head (`RunDatabase.head`) is kept in memory, not read back per commit (B2).

What is checked: after every kind of change to the file (appends, synchronous or in the
background, acknowledged retries, a failed commit, an imported log) the head the writer gives
is the file's, as another connection reads it; a closed store has no head.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from esper_es.core import events as ev
from esper_es.core.envelope import NewEvent
from esper_es.errors import StorageError
from esper_es.store import RunDatabase
from esper_es.store.chain import GENESIS


def _epoch(n: int) -> NewEvent:
    event = ev.EpochCompleted(epoch=n, step=n, train_loss=1.0, val_loss=1.0, val_accuracy=None)
    return NewEvent(event, f"epoch-{n}")


def _file_head(path: Path) -> tuple[int, str]:
    """The head another (read-only) connection sees committed."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else (0, GENESIS)
    finally:
        conn.close()


@pytest.mark.parametrize("background", [False, True])
def test_the_head_follows_every_append(db_path: Path, background: bool) -> None:
    db = RunDatabase.create(db_path, "r")
    if background:
        db.commit_in_background()
    assert db.head() == (0, GENESIS)
    db.append("run", 0, [_epoch(1), _epoch(2)])
    assert db.head() == _file_head(db_path) != (0, GENESIS)
    assert db.head()[0] == 2
    db.append("run", 2, [_epoch(3)])
    db.append_batch([("run", 3, [_epoch(4)]), ("run", 4, [_epoch(5)])])
    assert db.head() == _file_head(db_path)
    assert db.head()[0] == 5
    # A retried append is acknowledged: nothing written, the head stays.
    before = db.head()
    assert db.append("run", 2, [_epoch(3)]).acknowledged
    assert db.head() == before == _file_head(db_path)
    db.close()
    with pytest.raises(sqlite3.ProgrammingError):
        db.head()


def test_a_failed_commit_leaves_the_head_where_the_file_has_it(db_path: Path) -> None:
    db = RunDatabase.create(db_path, "r")
    db.commit_in_background()
    db.append("run", 0, [_epoch(1)])
    committed = db.head()
    pages = db.connection.execute("PRAGMA page_count").fetchone()[0]
    db.connection.execute(f"PRAGMA max_page_count = {pages}")
    db.stage_blobs([bytes(200_000)])
    db.append("run", 1, [_epoch(2)])  # planned on seq 1; its commit fails (SQLITE_FULL)
    with pytest.raises(StorageError):
        db.head()
    assert db.head() == committed == _file_head(db_path)
    db.connection.execute("PRAGMA max_page_count = 1000000")
    # The next append is planned on the file's head, not on the rows that never landed.
    assert db.append("run", 1, [_epoch(2)]).seqs == (2,)
    assert db.head() == _file_head(db_path)
    db.close()


def test_an_imported_log_moves_the_head(tmp_path: Path) -> None:
    source = RunDatabase.create(tmp_path / "a.db", "r")
    source.append("run", 0, [_epoch(1), _epoch(2), _epoch(3)])
    copy = RunDatabase.create(tmp_path / "b.db", "r")
    assert copy.head() == (0, GENESIS)  # known now, empty
    copy.import_log(source.rows(), source.branches(), source.blob_rows())
    assert copy.head() == source.head() == _file_head(tmp_path / "b.db")
    source.close()
    copy.close()


def _event_queries(db: RunDatabase) -> list[str]:
    seen: list[str] = []
    db.connection.set_trace_callback(
        lambda sql: seen.append(sql) if sql.startswith("SELECT") and "events" in sql else None
    )
    return seen


@pytest.mark.parametrize("background", [False, True])
def test_a_created_store_answers_reads_it_knows_without_a_query(
    db_path: Path, background: bool
) -> None:
    db = RunDatabase.create(db_path, "r")
    if background:
        db.commit_in_background()
    queries = _event_queries(db)
    # Empty: nothing to read, every stream at version 0, the head known.
    assert list(db.read()) == [] and list(db.read(stream="run")) == []
    assert db.stream_version("run") == 0 and db.head_seq("main") == 0
    db.append("run", 0, [_epoch(1), _epoch(2)])
    # Only `main`: its head is the file's.
    assert db.head_seq("main") == 2 == db.head_seq()
    assert queries == []
    assert [r.seq for r in db.read()] == [1, 2]  # not empty any more: read from the file
    assert queries
    db.open_branch("b", "main", 1)
    db.append("run", 1, [_epoch(9)], branch="b")
    assert db.head_seq("main") == 2 and db.head_seq("b") == 3  # asked, branch by branch
    db.close()
    with RunDatabase.open(db_path, readonly=True) as back:
        assert back.head_seq("main") == 2 and back.head_seq("b") == 3
