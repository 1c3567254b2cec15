"""A new run file's tables are created from SQL written out (`sqlite_files._CREATE_*`, B2):
the schema must be exactly what `sqlite_utils` created before, text and page layout alike."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils

from esper_es.store.sqlite_files import initialise

_MASTER = "SELECT type, name, tbl_name, rootpage, sql FROM sqlite_master ORDER BY rowid"


def _with_sqlite_utils(conn: sqlite3.Connection) -> None:
    """The core tables as `initialise` had `sqlite_utils` create them (meta rows between)."""
    db = sqlite_utils.Database(conn)
    db.table("meta").create({"key": str, "value": str}, pk="key")
    conn.execute("INSERT INTO meta (key, value) VALUES ('format', 'x')")
    db.table("events").create(
        {
            "seq": int, "event_id": str, "run_id": str, "branch": str, "stream": str,
            "stream_version": int, "type": str, "schema_version": int, "payload": str,
            "causation_id": str, "correlation_id": str, "recorded_at": str,
            "prev_hash": str, "hash": str,
        },
        pk="seq",
        not_null={
            "event_id", "run_id", "branch", "stream", "stream_version", "type",
            "schema_version", "payload", "recorded_at", "prev_hash", "hash",
        },
    )  # fmt: skip
    db.table("events").create_index(["event_id"], unique=True)
    db.table("events").create_index(["branch", "stream", "stream_version"], unique=True)
    db.table("blobs").create({"key": str, "size": int, "data": bytes}, pk="key")
    db.table("branches").create(
        {"name": str, "parent": str, "fork_seq": int, "created_seq": int}, pk="name"
    )


def test_the_core_tables_are_what_sqlite_utils_created(tmp_path: Path) -> None:
    initialise(tmp_path / "run.db", "r")
    conn = sqlite3.connect(tmp_path / "run.db")
    created = conn.execute(_MASTER).fetchall()
    conn.close()
    reference = sqlite3.connect(":memory:")
    _with_sqlite_utils(reference)
    expected = reference.execute(_MASTER).fetchall()
    assert created[: len(expected)] == expected
    assert [row[1] for row in created[len(expected) :]] == [
        "events_append_only_update",
        "events_append_only_delete",
        "blobs_immutable_update",
        "blobs_immutable_delete",
        "kernel_artifacts",
        "sqlite_autoindex_kernel_artifacts_1",
        "kernel_outcomes",
        "sqlite_autoindex_kernel_outcomes_1",
    ]
