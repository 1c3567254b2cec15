"""Connecting to a run's PostgreSQL schema: errors without secrets, the format check an
opened schema must pass, the writer's advisory lock, making room for a new run, and the
`SqlSession` of the side tables.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

import psycopg
from psycopg import sql

from esper_es.errors import DatabaseLocked, NotARunDatabase, StorageError
from esper_es.store.encoding import COLUMN_NAMES
from esper_es.store.pg_location import PgLocation
from esper_es.store.pg_schema import LIST_RUN_SCHEMAS, TABLE_COLUMNS, lock_key
from esper_es.store.records import FORMAT, FORMAT_VERSION

_CORE_COLUMNS = {
    "meta": {"key", "value"},
    "events": set(COLUMN_NAMES),
    "blobs": {"key", "size", "data"},
    "branches": {"name", "parent", "fork_seq", "created_seq"},
}


@contextlib.contextmanager
def server_errors(where: PgLocation) -> Iterator[None]:
    """psycopg's errors as esper-es's typed ones, with no secret of the location in them."""
    try:
        yield
    except psycopg.Error as exc:
        raise StorageError(where.redacted, where.scrub(str(exc).strip())) from None


def connect(where: PgLocation) -> psycopg.Connection[Any]:
    with server_errors(where):
        return psycopg.connect(where.conninfo, autocommit=True, application_name="esper-es")


def set_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))


def run_schemas(conn: psycopg.Connection[Any]) -> list[str]:
    """The schemas of this database that hold an esper-es run."""
    return [r[0] for r in conn.execute(LIST_RUN_SCHEMAS).fetchall()]


def keyset_pages(
    conn: psycopg.Connection[Any], mutex: threading.RLock, query: str, first: Any, size: int
) -> Iterator[tuple[Any, ...]]:
    """Every row of `query` (`… WHERE key > %s ORDER BY key LIMIT %s`, key first), a page of
    `size` at a time: range scans that hold no cursor open across the caller's own queries."""
    last = first
    while True:
        with mutex:
            page = conn.execute(query, (last, size)).fetchall()
        yield from page
        if len(page) < size:
            return
        last = page[-1][0]


def run_locations(location: str) -> list[str]:
    """A location for each run in the database `location` names (only its own where it names
    a schema), in schema order."""
    where = PgLocation.parse(location)
    if where.schema is not None:
        return [location]
    conn = connect(where)
    try:
        with server_errors(where):
            schemas = run_schemas(conn)
    finally:
        conn.close()
    sep = "&" if urlsplit(location).query else "?"
    return [f"{location}{sep}{urlencode({'schema': s})}" for s in schemas]


def take_lock(conn: psycopg.Connection[Any], where: PgLocation) -> None:
    assert where.schema is not None
    key = lock_key(where.schema)
    if conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:  # type: ignore[index]
        return
    row = conn.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid = %s AND objid = %s AND objsubid = 1",
        ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
    ).fetchone()
    raise DatabaseLocked(where.redacted, f"PostgreSQL backend pid {row[0]}" if row else "")


def check_format(conn: psycopg.Connection[Any], where: PgLocation) -> dict[str, str]:
    found: dict[str, set[str]] = {}
    for table, column in conn.execute(TABLE_COLUMNS, (where.schema,)).fetchall():
        found.setdefault(table, set()).add(column)
    if not found:
        raise NotARunDatabase(where.redacted, "no such schema, or it holds no tables")
    for table, columns in _CORE_COLUMNS.items():
        if not columns <= found.get(table, set()):
            raise NotARunDatabase(where.redacted, f"its {table} table lacks esper-es's columns")
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("format") != FORMAT:
        raise NotARunDatabase(where.redacted, f"format is {meta.get('format')!r}, not {FORMAT!r}")
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise NotARunDatabase(where.redacted, "format_version is missing or not a number") from None
    if version > FORMAT_VERSION:
        raise NotARunDatabase(
            where.redacted,
            f"format version {version} is newer than this esper-es reads ({FORMAT_VERSION}); "
            "upgrade esper-es",
        )
    if not isinstance(meta.get("run_id"), str):
        raise NotARunDatabase(where.redacted, "its meta table names no run")
    return meta


def pick_schema(conn: psycopg.Connection[Any], where: PgLocation) -> PgLocation:
    """`where` with its schema: the one named, else the database's only run."""
    if where.schema is not None:
        return where
    found = run_schemas(conn)
    if len(found) == 1:
        return where.with_schema(found[0])
    listed = ", ".join(found) if found else "none"
    raise NotARunDatabase(
        where.redacted,
        f"name the run's schema with ?schema=NAME (runs in this database: {listed})",
    )


def prepare_schema(conn: psycopg.Connection[Any], where: PgLocation) -> None:
    """Make room for a new run in `where.schema`, refusing one that holds anything."""
    assert where.schema is not None
    ident = sql.Identifier(where.schema)
    exists = conn.execute(
        "SELECT 1 FROM pg_namespace WHERE nspname = %s", (where.schema,)
    ).fetchone()
    if exists is None:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        return
    tables = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
        (where.schema,),
    ).fetchall()
    if not tables:
        return
    if {"events", "meta"} <= {t[0] for t in tables}:
        count = conn.execute(sql.SQL("SELECT count(*) FROM {}.events").format(ident)).fetchone()
        if count is not None and count[0] == 0:
            # A run killed before its first commit: replacing it loses nothing, and refusing
            # would block the name for good (as an SQLite file that never committed).
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(ident))
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
            return
        raise NotARunDatabase(where.redacted, "the schema already holds a run; choose a new one")
    raise NotARunDatabase(where.redacted, "the schema already holds other tables")


class PgSession:
    """`SqlSession` on the run's connection: `?` placeholders become psycopg's `%s`."""

    def __init__(
        self, conn: psycopg.Connection[Any], mutex: threading.RLock, schema: str, *, readonly: bool
    ) -> None:
        self._conn = conn
        self._mutex = mutex
        self._schema = schema
        self.readonly = readonly

    def query(self, sql_text: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only statement."""
        with self._mutex:
            return list(self._conn.execute(sql_text.replace("?", "%s"), args).fetchall())

    def execute(self, sql_text: str, args: Sequence[Any] = ()) -> None:
        """One writing statement, in its own transaction."""
        if self.readonly:
            raise PermissionError("the run is open read-only")
        with self._mutex, self._conn.transaction():
            self._conn.execute(sql_text.replace("?", "%s"), args)

    def execute_many(self, sql_text: str, rows: Sequence[Sequence[Any]]) -> None:
        """One writing statement for each of `rows`, all in one transaction."""
        if self.readonly:
            raise PermissionError("the run is open read-only")
        with self._mutex, self._conn.transaction(), self._conn.cursor() as cur:
            cur.executemany(sql_text.replace("?", "%s"), rows)

    def has_table(self, name: str) -> bool:
        """Whether the run's schema has a table called `name`."""
        with self._mutex:
            row = self._conn.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = %s"
                " AND table_name = %s",
                (self._schema, name),
            ).fetchone()
        return row is not None
