"""What creating a run database writes (B2: the fsyncs before a run's first step).

The staging file is created without a rollback journal, already in WAL mode and with the
kernel library's side tables, in one committed transaction; the writer's first connection and
the recorder's table set-up then find nothing left to write.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from esper_es.library.database import KernelTables
from esper_es.store.database import RunDatabase
from esper_es.store.side_tables import KERNEL_TABLES
from esper_es.store.sqlite_files import initialise


def test_the_staging_file_is_whole_in_wal_mode_with_the_kernel_tables(tmp_path: Path) -> None:
    staging = tmp_path / "run.db.creating"
    initialise(staging, "run-x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.db.creating"]  # no journal
    header = staging.read_bytes()[:20]
    assert header[18:20] == b"\x02\x02"  # the file format bytes of a WAL database
    conn = sqlite3.connect(staging)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"meta", "events", "blobs", "branches", "kernel_artifacts", "kernel_outcomes"} <= (
            tables
        )
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    assert len(KERNEL_TABLES) == 2


def test_opening_the_recorders_tables_on_a_new_database_writes_nothing(tmp_path: Path) -> None:
    with RunDatabase.create(tmp_path / "run.db", "run-x") as db:
        wal = tmp_path / "run.db-wal"
        before = wal.stat().st_size if wal.exists() else 0
        changes = db.connection.total_changes
        KernelTables(db.sql, writable=True)
        assert (wal.stat().st_size if wal.exists() else 0) == before
        assert db.connection.total_changes == changes
        mode = db.connection.execute("PRAGMA journal_mode").fetchone()[0]
        assert str(mode).lower() == "wal"
