"""What `verify` and `copy` read of a SQLite run file: raw rows and blobs, unchecked, and the
file's own integrity (triggers, SQLite's check, bytes after the last page, the audit trail).

The methods of `RunDatabase` that read around the decoded, schema-checked `read`: a verifier
must see the rows as stored to find what was tampered with, and a copy moves them as they are.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from esper_es.errors import TamperDetected
from esper_es.store.encoding import COLUMNS
from esper_es.store.protocol import Row
from esper_es.store.records import TRIGGERS
from esper_es.store.sqlite_files import SqliteSession, audit_path, check_file_end, iter_rows


class SqliteInspection:
    """The raw-reading methods of `RunDatabase` (on its connection and path)."""

    path: Path
    _sql: SqliteSession

    if TYPE_CHECKING:  # what the host class (`RunDatabase`) provides

        @property
        def _conn(self) -> sqlite3.Connection: ...  # waits for a commit in flight

        def _settle(self) -> None: ...

    @property
    def sql(self) -> SqliteSession:
        """The side tables' SQL session (signatures, kernel artifacts and outcomes)."""
        return self._sql

    def rows(self, from_seq: int = 1) -> Iterator[Row]:
        """Every raw row from `from_seq` on, in seq order, unchecked (for verify and copy)."""
        return iter_rows(self._conn, from_seq)

    def event_at(self, seq: int) -> Row | None:
        """The raw row at `seq`, if there is one."""
        row = self._conn.execute(f"SELECT {COLUMNS} FROM events WHERE seq=?", (seq,)).fetchone()
        return tuple(row) if row is not None else None

    def seq_of_hash(self, hash_hex: str) -> int | None:
        """The seq of the event whose hash is `hash_hex`, if any."""
        row = self._conn.execute("SELECT seq FROM events WHERE hash=?", (hash_hex,)).fetchone()
        return int(row[0]) if row is not None else None

    def blob_rows(self) -> Iterator[tuple[str, int, bytes]]:
        """Every stored blob as `(key, size, data)`, unchecked."""
        for key, size, data in self._conn.execute("SELECT key, size, data FROM blobs"):
            yield key, size, bytes(data)

    def missing_triggers(self) -> list[str]:
        """The append-only triggers that are not installed."""
        present = {
            r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")
        }
        return [t for t in TRIGGERS if t not in present]

    def check_storage(self) -> None:
        """SQLite's own check, and nothing after the file's last page (SQLite ignores it)."""
        quick = self._conn.execute("PRAGMA quick_check").fetchone()[0]
        if quick != "ok":
            raise TamperDetected(None, f"SQLite integrity check failed: {quick}")
        self.check_file_end()

    def check_file_end(self) -> None:
        """TamperDetected if bytes follow the database's last page (put there by someone else)."""
        check_file_end(self._conn, self.path)

    def audit_lines(self) -> Iterator[str] | None:
        """The lines of `<db>.audit.jsonl`, or None when there is no trail."""
        self._settle()  # the commit in flight writes its lines
        trail = audit_path(self.path)
        if not trail.exists():
            return None
        return _lines(trail)

    def storage_bytes(self) -> int:
        """The database file, its write-ahead log and its audit trail, in bytes."""
        self._settle()
        total = 0
        for path in (
            self.path,
            self.path.with_name(self.path.name + "-wal"),
            audit_path(self.path),
        ):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as fh:
        yield from fh
