"""Opening run databases: one writer at a time, read-only access, files that are not run dbs."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from esper_es.core import events as ev
from esper_es.core.envelope import NewEvent
from esper_es.errors import DatabaseLocked, NotARunDatabase
from esper_es.store import RunDatabase, verify
from esper_es.store.database import lock_path

REPO = Path(__file__).resolve().parents[2]

#: Run in a child process: try to open the database for writing, print what happened.
CHILD = textwrap.dedent(
    """
    import sys
    from esper_es.errors import DatabaseLocked
    from esper_es.store import RunDatabase
    try:
        RunDatabase.open(sys.argv[1]).close()
    except DatabaseLocked as exc:
        print("LOCKED", exc.exit_code, exc)
        sys.exit(exc.exit_code)
    print("OPENED")
    """
)


def open_in_child(path: Path) -> subprocess.CompletedProcess[str]:
    """Try to open `path` for writing from another process."""
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- one writer -----------------------------------------------------------------------


def test_second_writer_in_the_same_process_is_refused(history: Any) -> None:
    first = RunDatabase.open(history.path)
    try:
        with pytest.raises(DatabaseLocked) as info:
            RunDatabase.open(history.path)
        assert info.value.exit_code == 5
        assert str(history.path) in str(info.value)
        assert "read-only" in str(info.value)
        # The refused attempt must not have disturbed the holder.
        first.append("seed:layer1/0", 6, [NewEvent(ev.SeedCulled(seed="layer1/0", step=50), "x")])
    finally:
        first.close()
    with RunDatabase.open(history.path) as again:
        assert again.head()[0] == history.length + 1


def test_second_writer_from_another_process_is_refused(history: Any) -> None:
    with RunDatabase.open(history.path):
        child = open_in_child(history.path)
        assert child.returncode == 5, child.stderr
        assert child.stdout.startswith("LOCKED 5")
    child = open_in_child(history.path)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "OPENED"


def test_create_holds_the_writer_lock(db_path: Path) -> None:
    with RunDatabase.create(db_path, "r"):
        with pytest.raises(DatabaseLocked):
            RunDatabase.open(db_path)
        assert lock_path(db_path).exists()
    RunDatabase.open(db_path).close()


def test_close_is_idempotent_and_releases_the_lock(history: Any) -> None:
    db = RunDatabase.open(history.path)
    db.close()
    db.close()
    RunDatabase.open(history.path).close()


def test_read_only_open_works_while_a_writer_holds_it(history: Any) -> None:
    with RunDatabase.open(history.path) as writer:
        writer.append("seed:layer1/0", 6, [NewEvent(ev.SeedCulled(seed="layer1/0", step=50), "x")])
        with RunDatabase.open(history.path, readonly=True) as ro:
            recs = list(ro.read())
            assert len(recs) == history.length + 1  # sees the writer's committed append
            assert ro.readonly
            with pytest.raises(PermissionError):
                ro.append(
                    "seed:layer1/1", 3, [NewEvent(ev.SeedCulled(seed="layer1/1", step=9), "y")]
                )
            with pytest.raises(sqlite3.OperationalError):
                ro.connection.execute("DELETE FROM meta")
        # A second reader alongside: readers never take the writer lock.
        with (
            RunDatabase.open(history.path, readonly=True),
            RunDatabase.open(history.path, readonly=True),
        ):
            pass


# --- not a run database ---------------------------------------------------------------


def refused(path: Path) -> NotARunDatabase:
    """Opening `path` (writer, reader, verify) is refused as not a run database."""
    for attempt in (
        lambda: RunDatabase.open(path),
        lambda: RunDatabase.open(path, readonly=True),
        lambda: verify(path),
    ):
        with pytest.raises(NotARunDatabase) as info:
            attempt()
        assert info.value.exit_code == 2
    return info.value


def test_a_text_file_is_not_a_run_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes, not a database at all\n" * 3)
    err = refused(path)
    assert "not an SQLite file" in err.reason
    assert path.read_text().startswith("these are my notes")


@pytest.mark.parametrize("text", ["hi\n", "x", "SQLite"[::-1]])
def test_short_files_are_not_run_databases(tmp_path: Path, text: str) -> None:
    """Only a prefix of the SQLite header is a truncated database; other short files are not."""
    path = tmp_path / "short.db"
    path.write_text(text)
    refused(path)


def test_an_empty_file_is_not_a_run_database(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    refused(path)


def test_an_empty_sqlite_database_is_not_a_run_database(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE things (x)")
    conn.commit()
    conn.close()
    err = refused(path)
    assert "without esper-es tables" in err.reason
    # Nothing was added to the foreign database.
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert tables == {"things"}


def test_a_directory_is_not_a_run_database(tmp_path: Path) -> None:
    err = refused(tmp_path)
    assert "directory" in err.reason


def test_a_missing_path_is_not_a_run_database(tmp_path: Path) -> None:
    path = tmp_path / "nope.db"
    err = refused(path)
    assert "no such file" in err.reason
    assert not path.exists()


def test_a_newer_format_version_is_refused(history: Any) -> None:
    conn = sqlite3.connect(history.path)
    conn.execute("UPDATE meta SET value='2' WHERE key='format_version'")
    conn.commit()
    conn.close()
    err = refused(history.path)
    assert "newer" in err.reason


def test_a_foreign_format_is_refused(history: Any) -> None:
    conn = sqlite3.connect(history.path)
    conn.execute("UPDATE meta SET value='something else' WHERE key='format'")
    conn.commit()
    conn.close()
    refused(history.path)


def test_creating_over_an_existing_file_is_refused(history: Any) -> None:
    before = history.path.read_bytes()
    with pytest.raises(NotARunDatabase, match="already exists"):
        RunDatabase.create(history.path, "other")
    assert history.path.read_bytes() == before
    verify(history.path)


def test_a_refused_writer_open_leaves_a_foreign_database_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(NotARunDatabase):
        RunDatabase.open(path)
    assert path.read_bytes() == before
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        conn.close()


def test_refused_writer_open_leaves_no_lock_behind(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    sqlite3.connect(path).close()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    for _ in range(
        2
    ):  # a lock leaked by the first attempt would turn the second into DatabaseLocked
        with pytest.raises(NotARunDatabase):
            RunDatabase.open(path)


def test_a_writer_leaves_no_lock_file_and_the_lock_still_excludes(tmp_path) -> None:
    from esper_es.errors import DatabaseLocked
    from esper_es.store.database import RunDatabase

    db_path = tmp_path / "r.db"
    with RunDatabase.create(db_path, "run-lock") as db:
        assert (tmp_path / "r.db.lock").exists()
        # A second writer is refused while the first holds the lock ...
        with pytest.raises(DatabaseLocked):
            RunDatabase.open(db_path)
        assert db.head_seq() == 0
    # ... and once it has let go, nothing is left beside the database.
    assert not (tmp_path / "r.db.lock").exists()
    with RunDatabase.open(db_path):
        assert (tmp_path / "r.db.lock").exists()
    assert not (tmp_path / "r.db.lock").exists()


def test_a_lock_file_replaced_under_a_waiting_writer_is_not_trusted(tmp_path, monkeypatch) -> None:
    import os

    from esper_es.store import sqlite_files

    path = tmp_path / "r.db"
    lock = sqlite_files.lock_path(path)
    real_flock = sqlite_files.fcntl.flock
    swapped = []

    def flock_then_swap(fd: int, op: int) -> None:
        real_flock(fd, op)
        if not swapped and op & sqlite_files.fcntl.LOCK_EX:
            # What a releasing writer does between our open and our flock: the file we
            # opened is unlinked and a new one appears at the path.
            swapped.append(1)
            os.unlink(lock)
            lock.write_text("")

    monkeypatch.setattr(sqlite_files.fcntl, "flock", flock_then_swap)
    fd = sqlite_files.take_writer_lock(path)
    try:
        # The lock held is on the file now at the path, not on the unlinked one.
        assert os.fstat(fd).st_ino == os.stat(lock).st_ino
        assert swapped == [1]
    finally:
        sqlite_files.release_writer_lock(fd, path)
    assert not lock.exists()
