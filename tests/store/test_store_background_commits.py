"""Commits on a background thread (`RunDatabase.commit_in_background`, B2).

An append returns once its rows are planned; the next use of the store waits for the commit
and raises its error, typed; `close` waits too. No test waits on time: a commit is held back
by another connection's write lock, and made to fail with SQLite's page limit (SQLITE_FULL).
"""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

import pytest

from esper_es.core import events as ev
from esper_es.core.envelope import NewEvent
from esper_es.errors import StorageError
from esper_es.store import RunDatabase, verify
from esper_es.store.commit_writer import CommitWriter, _statements
from esper_es.store.sqlite_files import lock_path


def _epoch(n: int) -> NewEvent:
    """Event `n` of the run stream: the run's start, then epochs."""
    if n == 1:
        return NewEvent(ev.RunStarted(run_id="r", master_seed=1, config={}), "start")
    event = ev.EpochCompleted(epoch=n, step=n, train_loss=1.0, val_loss=1.0, val_accuracy=None)
    return NewEvent(event, f"epoch-{n}")


def _committed(path: Path) -> list[int]:
    """The seqs another connection sees committed."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")]
    finally:
        conn.close()


def _limit_growth(db: RunDatabase) -> None:
    """Make the file refuse to grow: the next append that adds a page fails (SQLITE_FULL)."""
    pages = db.connection.execute("PRAGMA page_count").fetchone()[0]
    db.connection.execute(f"PRAGMA max_page_count = {pages}")


def test_an_append_returns_its_seqs_and_events_before_the_commit(db_path: Path) -> None:
    db = RunDatabase.create(db_path, "r")
    db.commit_in_background()
    first = db.append("run", 0, [_epoch(1), _epoch(2)])
    assert first.seqs == (1, 2)
    appended = db.appended_after(0, "main")
    assert appended is not None
    assert [r.event for r in appended] == [_epoch(1).event, _epoch(2).event]
    # What the trainer projects is what a read gives once committed, row for row.
    assert appended == list(db.read())
    assert db.appended_after(1, "main") is None  # not every event after seq 1
    assert db.append("run", 2, [_epoch(3)]).seqs == (3,)
    assert db.head_seq("main") == 3
    db.close()
    assert _committed(db_path) == [1, 2, 3]
    assert verify(db_path).events == 3
    assert len(list(RunDatabase.open(db_path, readonly=True).audit_lines() or [])) == 3


def test_the_next_use_waits_for_a_commit_held_back(db_path: Path) -> None:
    db = RunDatabase.create(db_path, "r")
    db.commit_in_background()
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: the commit cannot land
    db.append("run", 0, [_epoch(1)])
    assert _committed(db_path) == []
    blocker.execute("ROLLBACK")
    blocker.close()
    assert [r.seq for r in db.read()] == [1]  # waited for the commit, then read it
    db.close()


def test_close_waits_for_the_commit_in_flight(db_path: Path) -> None:
    db = RunDatabase.create(db_path, "r")
    db.commit_in_background()
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    key = db.stage_blobs([b"snapshot"])[0]
    db.append("run", 0, [_epoch(1)])
    assert _committed(db_path) == []
    blocker.execute("ROLLBACK")
    blocker.close()
    db.close()
    assert _committed(db_path) == [1]
    assert not lock_path(db_path).exists()
    with RunDatabase.open(db_path, readonly=True) as ro:
        assert ro.get_blob(key) == b"snapshot"
    assert verify(db_path).blobs == 1


def _second_commit_fails(db_path: Path) -> RunDatabase:
    """A store whose first append committed and whose second (planned) cannot: the disk is full."""
    db = RunDatabase.create(db_path, "r")
    db.commit_in_background()
    db.append("run", 0, [_epoch(1)])
    _limit_growth(db)
    db.stage_blobs([bytes(200_000)])
    assert db.append("run", 1, [_epoch(2)]).seqs == (2,)  # planned, not yet committed
    return db


def test_a_failed_commit_raises_its_typed_error_at_the_next_use(db_path: Path) -> None:
    db = _second_commit_fails(db_path)
    with pytest.raises(StorageError, match="disk is full"):
        db.head()
    # Raised once; the file holds what was committed before, whole.
    assert db.head()[0] == 1
    db.close()
    assert _committed(db_path) == [1]
    assert verify(db_path).events == 1


def test_close_raises_a_failure_nobody_saw_and_still_lets_go(db_path: Path) -> None:
    db = _second_commit_fails(db_path)
    with pytest.raises(StorageError):
        db.close()
    assert not lock_path(db_path).exists()
    assert verify(db_path).events == 1
    RunDatabase.open(db_path).close()  # the writer lock was released


def _big(n: int) -> NewEvent:
    """A run-stream event too large for the pages the file has (its payload is ~200 KB)."""
    event = ev.EpochCompleted(
        epoch=n,
        step=n,
        train_loss=1.0,
        val_loss=1.0,
        val_accuracy=None,
        metrics={"x": "a" * 200_000},
    )
    return NewEvent(event, f"big-{n}")


def test_a_one_statement_commit_that_fails_leaves_nothing(db_path: Path) -> None:
    # One event, no blob: committed as a single INSERT with no BEGIN around it.
    db = RunDatabase.create(db_path, "r")
    db.commit_in_background()
    db.append("run", 0, [_epoch(1)])
    assert db.head()[0] == 1
    _limit_growth(db)
    assert db.append("run", 1, [_big(2)]).seqs == (2,)  # planned, not yet committed
    with pytest.raises(StorageError, match="disk is full"):
        db.head()
    assert not db.connection.in_transaction
    assert db.head()[0] == 1
    db.connection.execute("PRAGMA max_page_count = 1000000")
    assert db.append("run", 1, [_epoch(2)]).seqs == (2,)  # the next commit lands
    db.close()
    assert _committed(db_path) == [1, 2]
    assert verify(db_path).events == 2


@pytest.mark.parametrize("count", [1, 71, 72, 300])
def test_commits_of_one_statement_or_several_land_whole(db_path: Path, count: int) -> None:
    # 71 rows of 14 columns fit one statement (999 variables); more take several, in one
    # transaction.
    assert _statements([(0,) * 14] * count) == -(-count // 71)
    db = RunDatabase.create(db_path, "r")
    db.commit_in_background()
    db.append("run", 0, [_epoch(n) for n in range(1, count + 1)])
    db.close()
    assert _committed(db_path) == list(range(1, count + 1))
    assert verify(db_path).events == count


def test_the_writer_thread_starts_without_the_caller_waiting_and_closes_at_once() -> None:
    """Started by a helper (`CommitWriter.__init__`); jobs run in order whether the thread
    was up before the first `submit` or not, and a writer closed at once stops cleanly."""
    for _ in range(20):
        CommitWriter("t").close()  # the helper may run after the close: nothing raised
    writer = CommitWriter("t")
    done: list[int] = []
    for n in range(5):
        writer.submit(functools.partial(done.append, n))
    writer.close()
    assert done == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError):
        writer.submit(lambda: None)
