"""One interface over both backends for the conformance suite: where a run goes, and how to
edit it behind the store's back (as an attacker with write access would).

`Editor.execute` takes SQL in the subset both engines share, with `?` placeholders; edits run
with the append-only triggers off and, unless `restore_triggers=False`, back on afterwards.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from esper_es.store.backends import create_store, open_store
from esper_es.store.database import audit_path
from esper_es.store.protocol import RunStore


class Editor:
    """Raw SQL on a run's tables."""

    def __init__(self, run: Any, translate: bool) -> None:
        self._run = run
        self._translate = translate

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; its rows (empty for an edit)."""
        if self._translate:
            cur = self._run.execute(sql.replace("?", "%s"), args or None)
            return list(cur.fetchall()) if cur.description else []
        return list(self._run.execute(sql, args).fetchall())


class SqliteKit:
    """Runs as files in a temporary directory."""

    name = "sqlite"

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp
        self._n = 0

    def location(self) -> str:
        """Where a new run goes."""
        self._n += 1
        return str(self._tmp / f"run{self._n}.db")

    def create(self, location: str, run_id: str) -> RunStore:
        """A new run, open for writing."""
        return create_store(location, run_id)

    def open(self, location: str, *, readonly: bool = False) -> RunStore:
        """An existing run."""
        return open_store(location, readonly=readonly)

    def forget_audit(self, location: str) -> None:
        """Remove the audit trail, so the chain itself must catch an edit."""
        audit_path(Path(location)).unlink(missing_ok=True)

    @contextlib.contextmanager
    def raw(self, location: str) -> Iterator[Editor]:
        """SQL on the run's tables with the triggers on (what an accident would do)."""
        conn = sqlite3.connect(location, isolation_level=None)
        try:
            yield Editor(conn, translate=False)
        finally:
            conn.close()

    @contextlib.contextmanager
    def edit(self, location: str, *, restore_triggers: bool = True) -> Iterator[Editor]:
        """Edit the run's tables with the triggers dropped (restored afterwards by default)."""
        conn = sqlite3.connect(location, isolation_level=None)
        try:
            triggers = conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type='trigger'"
            ).fetchall()
            for name, _ in triggers:
                conn.execute(f"DROP TRIGGER {name}")
            conn.execute("BEGIN")
            yield Editor(conn, translate=False)
            conn.execute("COMMIT")
            if restore_triggers:
                for _, sql in triggers:
                    conn.execute(sql)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    def drop_trigger(self, location: str, name: str, table: str) -> None:
        """Remove one append-only trigger."""
        conn = sqlite3.connect(location, isolation_level=None)
        try:
            conn.execute(f"DROP TRIGGER {name}")
        finally:
            conn.close()


class PostgresKit:
    """Runs as schemas on the test server."""

    name = "postgresql"

    def location(self) -> str:
        """Where a new run goes."""
        from pg_support import fresh_url

        return fresh_url()

    def create(self, location: str, run_id: str) -> RunStore:
        """A new run, open for writing."""
        return create_store(location, run_id)

    def open(self, location: str, *, readonly: bool = False) -> RunStore:
        """An existing run."""
        return open_store(location, readonly=readonly)

    def forget_audit(self, location: str) -> None:
        """Drop the audit table, so the chain itself must catch an edit."""
        conn = self._connect(location)
        try:
            conn.execute("DROP TABLE IF EXISTS audit")
        finally:
            conn.close()

    def _connect(self, location: str) -> Any:
        import psycopg
        from psycopg import sql

        from esper_es.store.pg_location import PgLocation

        where = PgLocation.parse(location)
        conn = psycopg.connect(where.conninfo, autocommit=True)
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(where.schema)))
        return conn

    @contextlib.contextmanager
    def raw(self, location: str) -> Iterator[Editor]:
        """SQL on the run's tables with the triggers on (what an accident would do)."""
        conn = self._connect(location)
        try:
            yield Editor(conn, translate=True)
        finally:
            conn.close()

    @contextlib.contextmanager
    def edit(self, location: str, *, restore_triggers: bool = True) -> Iterator[Editor]:
        """Edit the run's tables with the triggers disabled (enabled afterwards by default)."""
        conn = self._connect(location)
        try:
            with conn.transaction():
                for table in ("events", "blobs", "audit"):
                    conn.execute(f"ALTER TABLE IF EXISTS {table} DISABLE TRIGGER USER")
                yield Editor(conn, translate=True)
                if restore_triggers:
                    for table in ("events", "blobs", "audit"):
                        conn.execute(f"ALTER TABLE IF EXISTS {table} ENABLE TRIGGER USER")
        finally:
            conn.close()

    def drop_trigger(self, location: str, name: str, table: str) -> None:
        """Remove one append-only trigger."""
        conn = self._connect(location)
        try:
            conn.execute(f"DROP TRIGGER {name} ON {table}")
        finally:
            conn.close()


Kit = SqliteKit | PostgresKit
