"""A PostgreSQL run's audit trail: the `audit` table (SPEC §3's trail, as SQLite's file).

The lines are those of `<db>.audit.jsonl` (rendered by `audit.AuditLines`, the same structlog
chain), one per event, written by the append's own cursor inside its transaction: they never
lag or lead the log, and cost no commit of their own. Runs created with `audit=False`, or by
an esper-es that predates the table, have none; every writer of a run that has one keeps it
complete.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from esper_es.store.audit import AuditLines
from esper_es.store.pg_session import keyset_pages
from esper_es.store.protocol import Row

_COPY_FROM = 8  # rows from which COPY beats executemany (one round trip instead of n)
_INSERT = "INSERT INTO audit (seq, line) VALUES (%s, %s)"
_COPY = "COPY audit (seq, line) FROM STDIN"
_PAGE = 5_000


def write_rows(
    cur: psycopg.Cursor[Any], insert: str, copy_sql: str, rows: Sequence[Sequence[Any]]
) -> None:
    """`rows` into a table: executemany for a few, COPY for more."""
    if len(rows) < _COPY_FROM:
        cur.executemany(insert, rows)
        return
    with cur.copy(copy_sql) as copy:
        for row in rows:
            copy.write_row(row)


class PgAuditTable:
    """The run's `audit` table: lines written with their events, read back in seq order."""

    def __init__(
        self, conn: psycopg.Connection[Any], mutex: threading.RLock, run_id: str, *, writer: bool
    ) -> None:
        self._conn = conn
        self._mutex = mutex
        self._lines = AuditLines(run_id) if writer else None

    def write(self, cur: psycopg.Cursor[Any], rows: Sequence[Row]) -> None:
        """The lines of `rows` (just inserted by `cur`), in the same transaction."""
        assert self._lines is not None, "read-only"
        write_rows(cur, _INSERT, _COPY, self._lines.render(rows))

    def write_all(self, cur: psycopg.Cursor[Any], rows: Iterator[Row]) -> None:
        """The lines of many rows, a page at a time (bounded memory)."""
        page: list[Row] = []
        for row in rows:
            page.append(row)
            if len(page) >= _PAGE:
                self.write(cur, page)
                page = []
        if page:
            self.write(cur, page)

    def lines(self) -> Iterator[str]:
        """Every line in seq order, paged through the primary key."""
        query = "SELECT seq, line FROM audit WHERE seq > %s ORDER BY seq LIMIT %s"
        for _, line in keyset_pages(self._conn, self._mutex, query, 0, _PAGE):
            yield line
