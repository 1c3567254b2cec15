"""The reads a run makes per boundary, and those of `inspect --at` / `replay --to` and
`head_seq`, walk a seq (rowid) range: their cost does not grow with the log (issue 12, B13).
They used to go through the (branch, stream, version) index and sort, 111 ms at 1 M events."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from esper_es.simulate import simulate
from esper_es.store.database import RunDatabase


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plans") / "run.db"
    simulate(path, events=2000, seed=5)
    return path


@contextmanager
def _plans(conn: sqlite3.Connection) -> Iterator[list[str]]:
    """The query plans of the SELECTs `conn` runs inside the block (one string each)."""
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    plans: list[str] = []
    try:
        yield plans
    finally:
        conn.set_trace_callback(None)
    for sql in seen:
        if sql.lstrip().upper().startswith("SELECT") and " FROM events" in sql:
            rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
            plans.append(" | ".join(str(r[-1]) for r in rows))


def _check(db: RunDatabase, call: Callable[[], object]) -> list[str]:
    with _plans(db.connection) as plans:
        call()
    assert plans, "no query was run"
    return plans


def test_the_reads_per_boundary_and_at_a_seq_are_rowid_ranges(big: Path) -> None:
    with RunDatabase.open(big, readonly=True) as db:
        head = db.head_seq()
        calls: list[Callable[[], object]] = [
            lambda: list(db.read(from_seq=head - 5, branch="main")),  # the projector's read
            lambda: list(db.read(to_seq=100, branch="main")),  # inspect --at, replay --to
            lambda: list(db.read(from_seq=10, to_seq=40, branch=None)),
        ]
        for call in calls:
            for plan in _check(db, call):
                assert "INTEGER PRIMARY KEY" in plan and "TEMP B-TREE" not in plan, plan
        for plan in _check(db, lambda: db.head_seq("main")):
            assert "TEMP B-TREE" not in plan and "COVERING INDEX" not in plan, plan


def test_a_stream_read_uses_the_stream_index(big: Path) -> None:
    with RunDatabase.open(big, readonly=True) as db:
        stream = db.connection.execute("SELECT stream FROM events WHERE seq = 5").fetchone()[0]
        for plan in _check(db, lambda: list(db.read(stream=stream, branch="main"))):
            assert "idx_events_branch_stream_stream_version" in plan, plan


def test_reads_return_the_same_events_as_before(big: Path) -> None:
    # Same rows whichever plan SQLite picks: compare with a plain scan.
    with RunDatabase.open(big, readonly=True) as db:
        got = [r.seq for r in db.read(from_seq=50, to_seq=900, branch="main")]
        want = [
            r[0]
            for r in db.connection.execute(
                "SELECT seq FROM events WHERE seq BETWEEN 50 AND 900 AND branch='main' ORDER BY seq"
            )
        ]
        assert got == want and db.head_seq("main") == db.head_seq()
