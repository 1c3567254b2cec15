"""Exit 5: one writer per run database; a second writer gets DatabaseLocked, readers never wait.

No CLI command writes to an *existing* database (simulate creates a new one, the rest read),
so the CLI's exit 5 is reached where two writers race for the same new path: simulate takes
the writer lock before it creates the file.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from esper_es.errors import (
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_USAGE,
    ConcurrencyError,
    DatabaseLocked,
)
from esper_es.store.database import RunDatabase, lock_path

# Opens the database for writing in a fresh interpreter and reports what happened as JSON.
_SECOND_WRITER = """
import json, sys
from esper_es.errors import DatabaseLocked
from esper_es.store.database import RunDatabase
try:
    RunDatabase.open(sys.argv[1]).close()
except DatabaseLocked as exc:
    print(json.dumps({"locked": True, "holder": exc.holder, "code": exc.exit_code}))
else:
    print(json.dumps({"locked": False}))
"""


def _second_writer(db: Path) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", _SECOND_WRITER, str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[Path]:
    """A path whose writer lock another (simulated) writer holds, before the file exists."""
    db = tmp_path / "racing.db"
    fd = os.open(lock_path(db), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.pwrite(fd, b"4242", 0)
    try:
        yield db
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def test_locked_errors_map_to_exit_5() -> None:
    assert DatabaseLocked.exit_code == EXIT_LOCKED == 5
    assert ConcurrencyError.exit_code == EXIT_LOCKED


def test_cli_simulate_against_a_held_lock_exits_5(cli, held_lock: Path) -> None:
    r = cli("simulate", "--db", held_lock, "--events", 100, "--json")
    assert r.code == EXIT_LOCKED
    obj = r.json()
    assert obj["error"] == "DatabaseLocked"
    assert obj["exit_code"] == EXIT_LOCKED
    assert "pid 4242" in obj["message"]
    assert "read-only" in obj["message"]
    assert not held_lock.exists()
    r = cli("simulate", "--db", held_lock, "--events", 100)
    assert r.code == EXIT_LOCKED
    assert r.out == ""
    assert "open for writing by another process" in r.err


def test_cli_exit_5_as_the_shell_sees_it(held_lock: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "esper_es.cli.main", "simulate", "--db", str(held_lock), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_LOCKED
    assert json.loads(proc.stdout)["error"] == "DatabaseLocked"


def test_a_second_writer_process_is_refused_while_readers_go_on(cli, db_copy: Path) -> None:
    with RunDatabase.open(db_copy) as writer:
        assert not writer.readonly
        second = _second_writer(db_copy)
        assert second == {"locked": True, "holder": f"pid {os.getpid()}", "code": EXIT_LOCKED}
        # The readers never take the lock.
        assert cli("verify", db_copy).code == EXIT_OK
        assert cli("history", db_copy, "--limit", 1).code == EXIT_OK
        assert cli("inspect", db_copy).code == EXIT_OK
    assert _second_writer(db_copy) == {"locked": False}


def test_a_second_writer_in_this_process_is_refused_too(db_copy: Path) -> None:
    with RunDatabase.open(db_copy), pytest.raises(DatabaseLocked):
        RunDatabase.open(db_copy)
    RunDatabase.open(db_copy).close()


def test_readers_verify_a_run_while_its_writer_appends(cli, tmp_path: Path) -> None:
    # The audit trail runs ahead of the snapshot verify reads; this once read as a cut tail.
    db = tmp_path / "live.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "esper_es.cli.main", "simulate", "--db", str(db),
         "--events", "1000000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        heads: list[int] = []
        while len(heads) < 3:
            assert proc.poll() is None, "the writer stopped early"
            assert time.monotonic() < deadline
            time.sleep(0.05)
            if not db.exists():
                continue
            try:
                r = cli("verify", db, "--json")
            except sqlite3.OperationalError:
                continue
            if r.code == EXIT_USAGE:  # the file exists but its tables are not committed yet
                continue
            assert r.code == EXIT_OK, r.out
            heads.append(r.json()["head_seq"])
            # Another writer is refused while this one runs, naming its pid.
            with pytest.raises(DatabaseLocked, match=f"pid {proc.pid}"):
                RunDatabase.open(db)
        assert heads == sorted(heads)
    finally:
        proc.kill()
        proc.wait()
