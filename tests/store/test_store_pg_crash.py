"""`kill -9` of a PostgreSQL writer: the run verifies, keeps everything committed, and the
server has released the writer's advisory lock (no stale lock), SPEC §3 and §11."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from esper_es.store.backends import open_store
from esper_es.store.verify import verify

WAIT_LIMIT_S = 120.0


def _seen(url: str) -> list[tuple[int, str]]:
    try:
        with open_store(url, readonly=True) as db:
            return [(r[0], r[-1]) for r in db.rows()]
    except Exception:
        return []  # the writer is still creating the schema


def test_a_killed_writer_leaves_a_verified_run_and_no_lock(pg_url: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "esper_es.cli.main", "simulate", "--db", pg_url,
         "--events", "1000000", "--seed", "5"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + WAIT_LIMIT_S
        seen: list[tuple[int, str]] = []
        while len(seen) < 200:
            assert proc.poll() is None, f"the writer exited early with {proc.returncode}"
            assert time.monotonic() < deadline, f"only {len(seen)} events appeared"
            time.sleep(0.05)
            seen = _seen(pg_url)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    report = verify(pg_url)
    after = _seen(pg_url)
    assert report.head_seq == len(after) >= len(seen)
    assert after[: len(seen)] == seen  # nothing a reader saw committed was lost
    # The server ended the killed session and its lock with it: a new writer gets in at once.
    with open_store(pg_url) as db:
        assert db.head()[0] == report.head_seq
