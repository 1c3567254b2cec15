"""`kill -9` during `esper-es simulate`: the file verifies and nothing committed is lost (SPEC §3).

Each kill point waits until a read-only reader sees at least N events, records every
`(seq, hash)` that reader can see, then SIGKILLs the writer at once. Whatever the reader saw
was committed, so after the kill the log must still hold those rows byte for byte (same
hashes), may hold more (commits between the read and the kill), and must verify.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esper_es.cli.main import main
from esper_es.command_bus import CommandBus
from esper_es.errors import EXIT_OK
from esper_es.store.database import RunDatabase
from esper_es.store.verify import verify

POLL_S = 0.02
# Generous: the writer's commit rate is bounded by fsync and varies with the machine's load.
WAIT_LIMIT_S = 120.0


def _committed(db: Path) -> list[tuple[int, str]]:
    """Every `(seq, hash)` a read-only reader sees now; empty before the tables exist."""
    if not db.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT seq, hash FROM events ORDER BY seq").fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return []  # the writer is still creating the file


def _start_writer(db: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "esper_es.cli.main", "simulate", "--db", str(db),
         "--events", "1000000", "--seed", "5"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def kill_at(db: Path, events: int) -> list[tuple[int, str]]:
    """Run a writer until a reader sees `events` events, SIGKILL it; return what was seen."""
    proc = _start_writer(db)
    try:
        deadline = time.monotonic() + WAIT_LIMIT_S
        seen: list[tuple[int, str]] = []
        while len(seen) < events:
            assert proc.poll() is None, f"the writer exited early with {proc.returncode}"
            assert time.monotonic() < deadline, f"only {len(seen)} events appeared"
            time.sleep(POLL_S)
            seen = _committed(db)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        return seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def check_after_kill(db: Path, seen: list[tuple[int, str]]) -> int:
    """The killed run verifies, keeps every row seen before the kill, and can be reopened."""
    assert main(["verify", str(db)]) == EXIT_OK
    report = verify(db)
    after = _committed(db)
    assert report.head_seq == len(after) >= len(seen)
    assert after[: len(seen)] == seen
    # The kernel released the dead writer's lock: a new writer resumes from the log.
    with RunDatabase.open(db) as writer:
        bus = CommandBus(writer)
        assert bus.run is not None
        assert writer.head()[0] == report.head_seq
    return report.head_seq


@pytest.mark.parametrize("events", [50, 1500, 4000])
def test_kill_9_loses_nothing_committed(tmp_path: Path, events: int) -> None:
    db = tmp_path / "killed.db"
    seen = kill_at(db, events)
    assert len(seen) >= events
    check_after_kill(db, seen)


@pytest.mark.slow
@pytest.mark.parametrize("events", [1, 10, 200, 800, 2500, 6000, 12_000, 25_000])
def test_kill_9_at_many_points(tmp_path: Path, events: int) -> None:
    db = tmp_path / "killed.db"
    check_after_kill(db, kill_at(db, events))
