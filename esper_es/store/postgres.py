"""The PostgreSQL run store (SPEC §11): one schema per run, same tables and chain as SQLite.

Appends are decided by `appending.plan_append` (as on SQLite), so the same events make the
same rows and hashes. Each append is one transaction; the writer holds a session-level
advisory lock keyed by the run's schema for as long as it is open (a second writer gets
`DatabaseLocked`, exit 5; a killed writer's session ends and the server drops its lock).
Reads page through the primary key (`seq > last ORDER BY seq LIMIT n`): range scans that never
hold a cursor open across the caller's own queries.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql

from esper_es.core.envelope import NewEvent, RecordedEvent
from esper_es.errors import (
    ConcurrencyError,
)
from esper_es.store.appending import Prepared, plan_for, prepare
from esper_es.store.blob_keys import checked_blob
from esper_es.store.branching import BranchIndex
from esper_es.store.chain import GENESIS
from esper_es.store.encoding import COLUMN_NAMES, COLUMNS, decode_row
from esper_es.store.pg_audit import PgAuditTable, write_rows
from esper_es.store.pg_location import PgLocation
from esper_es.store.pg_schema import (
    ALL_TRIGGERS,
    AUDIT_TRIGGERS,
    ENABLED_TRIGGERS,
    SCHEMA_BYTES,
    create_statements,
)
from esper_es.store.pg_session import (
    PgSession,
    check_format,
    connect,
    keyset_pages,
    pick_schema,
    prepare_schema,
    server_errors,
    set_schema,
    take_lock,
)
from esper_es.store.protocol import Row
from esper_es.store.records import MAIN, AppendResult, Branch

_PAGE = 5_000  # rows per page of a read: one round trip per page, bounded memory
_BLOB_PAGE = 64
_INSERT = f"INSERT INTO events ({COLUMNS}) VALUES ({', '.join(['%s'] * len(COLUMN_NAMES))})"
_COPY_EVENTS = f"COPY events ({COLUMNS}) FROM STDIN"


class PostgresStore(BranchIndex):
    """One run in one PostgreSQL schema: append events, read them back, store blobs."""

    backend = "postgresql"

    def __init__(self, where: PgLocation, conn: psycopg.Connection[Any], *, readonly: bool) -> None:
        self._where = where
        self.location = where.redacted
        self.schema: str = where.schema or ""
        self.readonly = readonly
        self._conn = conn
        self._mutex = threading.RLock()
        self.meta: dict[str, str] = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self.run_id: str = self.meta["run_id"]
        self._versions: dict[tuple[str, str], int] = {}
        self._head: tuple[int, str] | None = None
        self._load_branches()
        self._sql = PgSession(conn, self._mutex, self.schema, readonly=readonly)
        # The run's audit table, where it has one: every writer keeps it complete, whatever
        # `audit` it was opened with, since the lines are part of the run, not of the writer.
        has_audit = self._sql.has_table("audit")
        self._audit = (
            PgAuditTable(conn, self._mutex, self.run_id, writer=not readonly) if has_audit else None
        )

    # --- opening ----------------------------------------------------------------------

    @classmethod
    def create(cls, location: str, run_id: str, *, audit: bool = True) -> PostgresStore:
        """Create the run's schema (default: named after `run_id`) and open it for writing.

        With `audit` (the default) the run keeps its audit trail in an `audit` table.
        """
        where = PgLocation.parse(location)
        if where.schema is None:
            where = where.with_schema(run_id)
        assert where.schema is not None
        conn = connect(where)
        try:
            with server_errors(where):
                take_lock(conn, where)
                with conn.transaction():
                    prepare_schema(conn, where)
                    set_schema(conn, where.schema)
                    for stmt, args in create_statements(run_id, audit=audit):
                        conn.execute(stmt, args or None)
                set_schema(conn, where.schema)
                return cls(where, conn, readonly=False)
        except BaseException:
            conn.close()
            raise

    @classmethod
    def open(cls, location: str, *, readonly: bool = False, audit: bool = True) -> PostgresStore:
        """Open an existing run, for writing (one writer at a time) or read-only.

        `audit` is accepted for the protocol: a run with an audit table always gets its lines.
        """
        where = PgLocation.parse(location)
        conn = connect(where)
        try:
            with server_errors(where):
                where = pick_schema(conn, where)
                assert where.schema is not None
                set_schema(conn, where.schema)
                check_format(conn, where)
                if readonly:
                    conn.execute("SET default_transaction_read_only = on")
                else:
                    take_lock(conn, where)
                return cls(where, conn, readonly=readonly)
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        """Close the connection; the server drops the writer's advisory lock with it."""
        with self._mutex:
            if self._conn.closed:
                return
            self._conn.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sql(self) -> PgSession:
        """The side tables' SQL session."""
        return self._sql

    # --- branches and heads -----------------------------------------------------------

    def _load_branches(self) -> None:
        self._set_branches(
            self._conn.execute("SELECT name, parent, fork_seq, created_seq FROM branches")
        )

    def open_branch(self, name: str, parent: str, fork_seq: int) -> Branch:
        """Record a new branch forking `parent` after `fork_seq` (used by rollback)."""
        self._require_writer()
        head, _ = self.head()
        self._check_new_branch(name, parent, fork_seq, head)
        with self._mutex, self._conn.transaction():
            self._conn.execute(
                "INSERT INTO branches (name, parent, fork_seq, created_seq) VALUES (%s,%s,%s,%s)",
                (name, parent, fork_seq, head),
            )
        self._load_branches()
        return self._branches[name]

    def head(self) -> tuple[int, str]:
        """`(seq, hash)` of the last event, `(0, GENESIS)` when empty."""
        with self._mutex:
            row = self._conn.execute(
                "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        return (int(row[0]), row[1]) if row else (0, GENESIS)

    def head_seq(self, branch: str | None = None) -> int:
        """The last seq visible from `branch` (the whole log when None)."""
        if branch is None:
            return self.head()[0]
        best = 0
        for cond, args in self.lineage_levels(branch, mark="%s"):
            q = f"SELECT seq FROM events WHERE {cond} ORDER BY seq DESC LIMIT 1"
            with self._mutex:
                row = self._conn.execute(q, args).fetchone()
            best = max(best, int(row[0]) if row else 0)
        return best

    def stream_version(self, stream: str, branch: str = MAIN) -> int:
        """The stream's current version on `branch` (0 if it has no events)."""
        key = (branch, stream)
        cached = self._versions.get(key)
        if cached is not None:
            return cached
        version = 0
        for cond, args in self.lineage_levels(branch, mark="%s"):
            q = f"SELECT MAX(stream_version) FROM events WHERE stream = %s AND {cond}"
            with self._mutex:
                found = self._conn.execute(q, [stream, *args]).fetchone()[0]  # type: ignore[index]
            if found is not None:
                version = int(found)
                break
        if not self.readonly:
            self._versions[key] = version
        return version

    def _prefetch_versions(self, streams: list[str], branch: str) -> None:
        """Fill the version cache for `streams` in one query per lineage level, not one each.

        The same answer as `stream_version` (the nearest level with any event of the stream
        decides): a batch touching hundreds of new streams costs one round trip, not hundreds.
        """
        missing = {s for s in streams if (branch, s) not in self._versions}
        if not missing:
            return
        found: dict[str, int] = {}
        for cond, args in self.lineage_levels(branch, mark="%s"):
            q = (
                "SELECT stream, MAX(stream_version) FROM events"
                f" WHERE stream = ANY(%s) AND {cond} GROUP BY stream"
            )
            for stream, version in self._conn.execute(q, [sorted(missing), *args]).fetchall():
                found[stream] = int(version)
                missing.discard(stream)
            if not missing:
                break
        for stream in missing:
            found[stream] = 0
        for stream, version in found.items():
            self._versions[(branch, stream)] = version

    # --- appending --------------------------------------------------------------------

    def append(
        self, stream: str, expected_version: int, events: Sequence[NewEvent], *, branch: str = MAIN
    ) -> AppendResult:
        """Append `events` to `stream` atomically if it is at `expected_version`."""
        return self.append_batch([(stream, expected_version, events)], branch=branch)[0]

    def append_batch(
        self, batches: Sequence[tuple[str, int, Sequence[NewEvent]]], *, branch: str = MAIN
    ) -> list[AppendResult]:
        """Append to several streams in one transaction: all of it, or none of it."""
        self._require_writer()
        self.branch(branch)
        prepared = prepare(batches)
        with self._mutex:
            try:
                return self._append_locked(prepared, branch, look_up_ids=False)
            except (psycopg.errors.UniqueViolation, ConcurrencyError):
                # As on SQLite: a stored id (a retry, acknowledged) or versions that moved.
                return self._append_locked(prepared, branch, look_up_ids=True)

    def _append_locked(
        self, prepared: Prepared, branch: str, *, look_up_ids: bool
    ) -> list[AppendResult]:
        try:
            with self._conn.transaction():
                # The writer's lock means no one else appends: the head it last wrote is the
                # head, and one round trip per append is saved.
                head = self._head if self._head is not None else self.head()
                self._prefetch_versions([stream for stream, _, _ in prepared], branch)
                rows, results, new_versions = plan_for(self, prepared, branch, head, look_up_ids)
                if rows:
                    self._insert(rows)
        except BaseException:
            self._head = None
            raise
        self._head = (rows[-1][0], rows[-1][-1]) if rows else head
        for stream, version in new_versions.items():
            self._versions[(branch, stream)] = version
        return results

    def _insert(self, rows: Sequence[Row]) -> None:
        with self._conn.cursor() as cur:
            write_rows(cur, _INSERT, _COPY_EVENTS, rows)
            if self._audit is not None:
                self._audit.write(cur, rows)

    def _existing(self, ids: list[str]) -> dict[str, tuple[str, str, str, int]]:
        rows = self._conn.execute(
            "SELECT event_id, stream, type, payload, seq FROM events WHERE event_id = ANY(%s)",
            (ids,),
        ).fetchall()
        return {r[0]: (r[1], r[2], r[3], int(r[4])) for r in rows}

    # --- reading ----------------------------------------------------------------------

    def read(
        self,
        *,
        stream: str | None = None,
        branch: str | None = MAIN,
        from_seq: int = 1,
        to_seq: int | None = None,
        types: Sequence[str] | None = None,
    ) -> Iterator[RecordedEvent]:
        """Events in seq order, upcast and schema-checked; `branch=None` reads everything."""
        clauses: list[str] = []
        args: list[Any] = []
        if to_seq is not None:
            clauses.append("seq <= %s")
            args.append(to_seq)
        if stream is not None:
            clauses.append("stream = %s")
            args.append(stream)
        if types:
            clauses.append("type = ANY(%s)")
            args.append(list(types))
        if branch is not None:
            visible, visible_args = self.lineage_condition(branch, mark="%s")
            clauses.append(visible)
            args.extend(visible_args)
        for row in self._pages(clauses, args, from_seq):
            yield decode_row(row)

    def rows(self, from_seq: int = 1) -> Iterator[Row]:
        """Every raw row from `from_seq` on, in seq order, unchecked (for verify and copy)."""
        return self._pages([], [], from_seq)

    def _pages(self, clauses: list[str], args: list[Any], from_seq: int) -> Iterator[Row]:
        where = "".join(f" AND {c}" for c in clauses)
        q = f"SELECT {COLUMNS} FROM events WHERE seq > %s{where} ORDER BY seq LIMIT {_PAGE}"
        last = from_seq - 1
        while True:
            with self._mutex:
                page = self._conn.execute(q, [last, *args]).fetchall()
            yield from page
            if len(page) < _PAGE:
                return
            last = page[-1][0]

    def event_at(self, seq: int) -> Row | None:
        """The raw row at `seq`, if there is one."""
        with self._mutex:
            row = self._conn.execute(f"SELECT {COLUMNS} FROM events WHERE seq = %s", (seq,))
            return row.fetchone()

    def seq_of_hash(self, hash_hex: str) -> int | None:
        """The seq of the event whose hash is `hash_hex`, if any."""
        with self._mutex:
            row = self._conn.execute("SELECT seq FROM events WHERE hash = %s", (hash_hex,))
            found = row.fetchone()
        return int(found[0]) if found is not None else None

    # --- blobs ------------------------------------------------------------------------

    def put_blob(self, data: bytes) -> str:
        """Store `data` under its SHA-256 (hex), once however often put; return the key."""
        return self.put_blobs([data])[0]

    def put_blobs(self, blobs: Sequence[bytes]) -> list[str]:
        """Store several blobs in one transaction; returns their keys in order."""
        self._require_writer()
        rows = [(hashlib.sha256(b).hexdigest(), len(b), bytes(b)) for b in blobs]
        if rows:
            with self._mutex, self._conn.transaction(), self._conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO blobs (key, size, data) VALUES (%s,%s,%s)"
                    " ON CONFLICT (key) DO NOTHING",
                    rows,
                )
        return [r[0] for r in rows]

    def commit_in_background(self) -> None:
        """Nothing: a PostgreSQL append commits on the server before it returns."""

    def appended_after(self, after: int, branch: str) -> list[RecordedEvent] | None:
        """None: a reader reads the events back (the append is already committed)."""
        return None

    def stage_blobs(self, blobs: Sequence[bytes], keys: Sequence[str] | None = None) -> list[str]:
        """Store blobs for the next append: here at once (no fsync per transaction to save)."""
        return self.put_blobs(blobs)

    def has_blob(self, key: str) -> bool:
        """Whether a blob with this key is stored."""
        with self._mutex:
            row = self._conn.execute("SELECT 1 FROM blobs WHERE key = %s", (key,)).fetchone()
        return row is not None

    def stored_blobs(self, keys: Sequence[str]) -> set[str]:
        """Those of `keys` whose blobs are stored, in one query."""
        if not keys:
            return set()
        with self._mutex:
            rows = self._conn.execute(
                "SELECT key FROM blobs WHERE key = ANY(%s)", (list(keys),)
            ).fetchall()
        return {str(r[0]) for r in rows}

    def get_blob(self, key: str) -> bytes:
        """The blob stored under `key`, checked against its hash."""
        with self._mutex:
            row = self._conn.execute("SELECT data FROM blobs WHERE key = %s", (key,)).fetchone()
        return checked_blob(key, row)

    def blob_rows(self) -> Iterator[tuple[str, int, bytes]]:
        """Every stored blob as `(key, size, data)` in key order, unchecked."""
        query = "SELECT key, size, data FROM blobs WHERE key > %s ORDER BY key LIMIT %s"
        for key, size, data in keyset_pages(self._conn, self._mutex, query, "", _BLOB_PAGE):
            yield key, int(size), bytes(data)

    # --- what verify and copy need ----------------------------------------------------

    def missing_triggers(self) -> list[str]:
        """The append-only triggers not installed or disabled (TRUNCATE's included)."""
        with self._mutex:
            rows = self._conn.execute(ENABLED_TRIGGERS, (self.schema,)).fetchall()
        present = {r[0] for r in rows}
        wanted = ALL_TRIGGERS if self._audit is None else (*ALL_TRIGGERS, *AUDIT_TRIGGERS)
        return [t for t in wanted if t not in present]

    def check_storage(self) -> None:
        """Nothing to add: the server keeps its pages consistent, and rows are checked by hash."""

    def audit_lines(self) -> Iterator[str] | None:
        """The lines of the run's `audit` table in seq order, or None where it has none."""
        return None if self._audit is None else self._audit.lines()

    def storage_bytes(self) -> int:
        """The run schema's tables with their indexes and TOAST, in bytes."""
        with self._mutex:
            row = self._conn.execute(SCHEMA_BYTES, (self.schema,)).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def import_log(
        self,
        rows: Iterator[Row],
        branches: Sequence[Branch],
        blobs: Iterator[tuple[str, int, bytes]],
    ) -> None:
        """Load another store's log as it is (hashes, times and all) into this empty store."""
        self._require_writer()
        if self.head()[0] != 0:
            raise ValueError(f"{self.location} already holds events")
        with self._mutex, self._conn.transaction(), self._conn.cursor() as cur:
            with cur.copy("COPY blobs (key, size, data) FROM STDIN") as copy:
                for blob in blobs:
                    copy.write_row(blob)
            cur.executemany(
                "INSERT INTO branches (name, parent, fork_seq, created_seq) VALUES (%s,%s,%s,%s)"
                " ON CONFLICT (name) DO NOTHING",
                [(b.name, b.parent, b.fork_seq, b.created_seq) for b in branches],
            )
            with cur.copy(_COPY_EVENTS) as copy:
                for row in rows:
                    copy.write_row(row)
            if self._audit is not None:
                # New lines for the imported rows, as the SQLite side writes a new file: the
                # trail says when this store received each event.
                self._audit.write_all(cur, self._pages([], [], 1))
        self._versions.clear()
        self._head = None
        self._load_branches()

    def drop(self) -> None:
        """Remove this run's schema and everything in it (for tests and refused copies)."""
        self._require_writer()
        with self._mutex:
            self._conn.execute(
                sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(self.schema))
            )

    def _require_writer(self) -> None:
        if self.readonly:
            raise PermissionError(f"{self.location} is open read-only")
