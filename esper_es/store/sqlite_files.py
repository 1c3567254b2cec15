"""The SQLite backend's file handling: creating, opening and checking a run database file.

Connections (WAL, synchronous=FULL, a busy timeout), the schema a new file gets, the format
check an opened file must pass, the `<db>.lock` flock of the single writer, and the mapping
of SQLite's errors onto esper-es's typed ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from esper_es import __version__
from esper_es.errors import (
    DatabaseLocked,
    EsperError,
    NotARunDatabase,
    StorageError,
    TamperDetected,
)
from esper_es.store.encoding import COLUMN_NAMES, COLUMNS
from esper_es.store.records import FORMAT, FORMAT_VERSION, MAIN, TRIGGERS, now_iso
from esper_es.store.side_tables import KERNEL_TABLES
from esper_es.store.uri import readonly_uri

_SQLITE_MAGIC = b"SQLite format 3\x00"

_TRIGGER_SQL = (
    "CREATE TRIGGER IF NOT EXISTS {name} BEFORE {op} ON {table}"
    " BEGIN SELECT RAISE(ABORT, '{table} are {why}: {op} refused'); END"
)
_TRIGGER_SPECS = (
    ("events_append_only_update", "UPDATE", "events", "append-only"),
    ("events_append_only_delete", "DELETE", "events", "append-only"),
    ("blobs_immutable_update", "UPDATE", "blobs", "content-addressed"),
    ("blobs_immutable_delete", "DELETE", "blobs", "content-addressed"),
)
assert tuple(spec[0] for spec in _TRIGGER_SPECS) == TRIGGERS

#: The core tables, as `sqlite_utils` wrote them (the same text in `sqlite_master`, a test
#: checks): written out, because asking `sqlite_utils` to create them ran ~50 introspection
#: queries and savepoints, ~0.7 ms of every run's start (B2).
_CREATE_META = 'CREATE TABLE "meta" (\n   "key" TEXT PRIMARY KEY,\n   "value" TEXT\n)'
_CREATE_CORE = (
    'CREATE TABLE "events" (\n   "seq" INTEGER PRIMARY KEY,\n   "event_id" TEXT NOT NULL,\n'
    '   "run_id" TEXT NOT NULL,\n   "branch" TEXT NOT NULL,\n   "stream" TEXT NOT NULL,\n'
    '   "stream_version" INTEGER NOT NULL,\n   "type" TEXT NOT NULL,\n'
    '   "schema_version" INTEGER NOT NULL,\n   "payload" TEXT NOT NULL,\n'
    '   "causation_id" TEXT,\n   "correlation_id" TEXT,\n   "recorded_at" TEXT NOT NULL,\n'
    '   "prev_hash" TEXT NOT NULL,\n   "hash" TEXT NOT NULL\n)',
    'CREATE UNIQUE INDEX "idx_events_event_id"\n    ON "events" ("event_id")',
    'CREATE UNIQUE INDEX "idx_events_branch_stream_stream_version"\n'
    '    ON "events" ("branch", "stream", "stream_version")',
    'CREATE TABLE "blobs" (\n   "key" TEXT PRIMARY KEY,\n   "size" INTEGER,\n   "data" BLOB\n)',
    'CREATE TABLE "branches" (\n   "name" TEXT PRIMARY KEY,\n   "parent" TEXT,\n'
    '   "fork_seq" INTEGER,\n   "created_seq" INTEGER\n)',
)

INSERT_EVENTS = (
    "INSERT INTO events (seq, event_id, run_id, branch, stream, stream_version, type,"
    " schema_version, payload, causation_id, correlation_id, recorded_at, prev_hash, hash)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


def lock_path(path: Path) -> Path:
    """The sidecar file whose flock marks the single writer."""
    return path.with_name(path.name + ".lock")


def audit_path(path: Path) -> Path:
    """The JSON-lines audit trail beside the database."""
    return path.with_name(path.name + ".audit.jsonl")


def check_run_database_file(path: Path) -> None:
    """Raise NotARunDatabase unless `path` is an existing SQLite file."""
    if not path.exists():
        raise NotARunDatabase(str(path), "no such file")
    if path.is_dir():
        raise NotARunDatabase(str(path), "is a directory")
    with path.open("rb") as fh:
        head = fh.read(len(_SQLITE_MAGIC))
    if head != _SQLITE_MAGIC:
        # Only a non-empty prefix of the magic is a cut SQLite file; any other short file
        # (a one-line text file) is simply not a run database.
        if head and len(head) < len(_SQLITE_MAGIC) and _SQLITE_MAGIC.startswith(head):
            raise TamperDetected(None, f"{path} is truncated to {path.stat().st_size} bytes")
        raise NotARunDatabase(str(path), "not an SQLite file")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One `BEGIN IMMEDIATE … COMMIT` (rolled back on any exception)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        # SQLite has already rolled back after some errors (SQLITE_FULL): a second ROLLBACK
        # would fail and hide the error that matters.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def initialise(path: Path, run_id: str) -> None:
    """Write an empty run database (schema, meta, `main` branch, triggers) at `path`."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # No rollback journal: this file is a staging copy that `RunDatabase.create` renames
        # into place only once this function returned, and a crash before that leaves it
        # to be thrown away; the commit still syncs it (`synchronous = FULL`). It is switched
        # to WAL here too, so the writer's `connect` finds it in WAL already. The journal's
        # and the later switch's own syncs were 6 of the 8 fsyncs that opened every run
        # (milliseconds each on a busy disk, before the first step; B2).
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = FULL")
        with transaction(conn):
            conn.execute(_CREATE_META)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("format", FORMAT),
                    ("format_version", str(FORMAT_VERSION)),
                    ("run_id", run_id),
                    ("created_at", now_iso()),
                    ("created_by", f"esper-es {__version__}"),
                ],
            )
            for sql in _CREATE_CORE:
                conn.execute(sql)
            conn.execute(
                "INSERT INTO branches (name, parent, fork_seq, created_seq) VALUES (?,?,?,?)",
                (MAIN, None, 0, 0),
            )
            for name, op, table, why in _TRIGGER_SPECS:
                conn.execute(_TRIGGER_SQL.format(name=name, op=op, table=table, why=why))
            # Created here, in the creation's one transaction: the recorder creates them at
            # every writer open otherwise, as two transactions of their own, each with its
            # fsync (milliseconds of every run's start, B2); for tables that exist that
            # `CREATE TABLE IF NOT EXISTS` writes nothing.
            for sql in KERNEL_TABLES:
                conn.execute(sql)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"could not switch {path} to WAL (got {mode})")
    finally:
        conn.close()


def sqlite_failure(path: Path, exc: sqlite3.DatabaseError) -> EsperError:
    """The typed error for an SQLite failure on `path`: tampering only where the bytes are bad.

    SQLite's corrupt / not-a-database codes mean the file's content is wrong (exit 3); a
    file it cannot open, read or write (permissions, a read-only place, a full disk, I/O)
    says nothing about the content and must not raise a false tamper alarm (exit 1).
    """
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or not isinstance(
        exc, sqlite3.OperationalError
    ):
        return TamperDetected(None, f"{path} is corrupt or truncated: {exc}")
    if name.startswith("SQLITE_FULL"):
        return StorageError(str(path), f"the disk is full ({exc})")
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")):
        return StorageError(str(path), f"no permission to open or write it here ({exc})")
    return StorageError(str(path), f"{exc}")


def _readable_without_shared_memory(path: Path) -> bool:
    # A WAL database is read through its `-shm` index, which a read-only directory cannot
    # hold. Opened as immutable, SQLite reads the main file alone and locks nothing: exact
    # only when no WAL content is pending, and safe because no writer can work in a
    # directory that cannot hold its WAL either.
    wal = path.with_name(path.name + "-wal")
    pending = wal.exists() and wal.stat().st_size > 0
    return not pending and not os.access(path.parent, os.W_OK)


def connect_readonly(path: Path) -> sqlite3.Connection:
    # Where this process may write, a reader opens read-write with `query_only` on: SQLite
    # refuses every change through it, yet as the last connection to close it removes the
    # WAL's `-wal` and `-shm` files, which a `mode=ro` reader leaves behind (beside a closed,
    # clean database they would be stray files the user never asked for, SPEC §9).
    if os.access(path, os.W_OK) and os.access(path.parent, os.W_OK):
        conn = sqlite3.connect(
            readonly_uri(path, mode="rw"), uri=True, isolation_level=None,
            check_same_thread=False,
        )  # fmt: skip
        conn.execute("PRAGMA query_only = ON")
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn
    conn = sqlite3.connect(
        readonly_uri(path), uri=True, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA busy_timeout = 5000")
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        conn.close()
        if not _readable_without_shared_memory(path):
            raise
        conn = sqlite3.connect(
            readonly_uri(path, immutable=True), uri=True, isolation_level=None,
            check_same_thread=False,
        )  # fmt: skip
    return conn


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        return connect_readonly(path)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.DatabaseError(f"could not switch {path} to WAL (got {mode})")
    conn.execute("PRAGMA synchronous = FULL")
    # Event ids are random, so each batch dirties index pages all over the unique event_id
    # index. A bigger page cache and checkpointing every 64 MiB of WAL (not SQLite's 4 MiB)
    # let a checkpoint write a page once for many batches: ~15 % more appends/s on disk (B4).
    # Durability is unchanged; the WAL is truncated on close.
    conn.execute("PRAGMA cache_size = -65536")
    conn.execute("PRAGMA wal_autocheckpoint = 16384")
    return conn


#: The columns each core table must have (a file with these tables but other columns is not
#: a run database, whatever its meta says).
_TABLE_COLUMNS: dict[str, frozenset[str]] = {
    "meta": frozenset({"key", "value"}),
    "events": frozenset(COLUMN_NAMES),
    "blobs": frozenset({"key", "size", "data"}),
    "branches": frozenset({"name", "parent", "fork_seq", "created_seq"}),
}


def check_format(path: Path, conn: sqlite3.Connection) -> None:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not set(_TABLE_COLUMNS) <= tables:
        raise NotARunDatabase(str(path), "an SQLite file without esper-es tables")
    for table, columns in _TABLE_COLUMNS.items():
        present = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if not columns <= present:
            raise NotARunDatabase(str(path), f"its {table} table lacks esper-es's columns")
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("format") != FORMAT:
        raise NotARunDatabase(str(path), f"format is {meta.get('format')!r}, not {FORMAT!r}")
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise NotARunDatabase(str(path), "format_version is missing or not a number") from None
    if version > FORMAT_VERSION:
        raise NotARunDatabase(
            str(path),
            f"format version {version} is newer than this esper-es reads ({FORMAT_VERSION}); "
            "upgrade esper-es",
        )


def never_committed(path: Path) -> bool:
    """True for an esper-es run database in which no event was ever committed."""
    try:
        check_run_database_file(path)
        conn = connect(path, readonly=True)
        try:
            check_format(path, conn)
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0]) == 0
        finally:
            conn.close()
    except (EsperError, sqlite3.DatabaseError):
        return False


def take_writer_lock(path: Path) -> int:
    """Hold `<db>.lock` (flock, exclusive, non-blocking) for this process; it names our pid."""
    lp = lock_path(path)
    while True:
        fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise DatabaseLocked(str(path), f"pid {holder}" if holder else "") from None
        # A writer removes the lock file when it lets go (no file is left behind), so the
        # file locked here may have been unlinked between our open and our flock: only the
        # file still at the path counts; otherwise try again on the one there now.
        try:
            on_disk = os.stat(lp)
        except FileNotFoundError:
            os.close(fd)
            continue
        held = os.fstat(fd)
        if (on_disk.st_dev, on_disk.st_ino) != (held.st_dev, held.st_ino):
            os.close(fd)
            continue
        break
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def release_writer_lock(fd: int | None, path: Path | None = None) -> None:
    """Let go of the writer lock, removing `<db>.lock` first when `path` is given."""
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        if path is not None:
            # Unlinked while still held: a process that opened the old file finds it gone
            # (or replaced) after its flock and retries, so two writers never coexist.
            os.unlink(lock_path(path))
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def iter_rows(conn: sqlite3.Connection, from_seq: int) -> Iterator[tuple[Any, ...]]:
    """Every raw event row from `from_seq` on, in seq order; a corrupt page names the seq."""
    cur = conn.execute(f"SELECT {COLUMNS} FROM events WHERE seq >= ? ORDER BY seq", (from_seq,))
    last = from_seq - 1
    while True:
        try:
            row = cur.fetchone()
        except sqlite3.DatabaseError as exc:
            raise TamperDetected(
                last + 1, f"file is corrupt or truncated after seq {last}: {exc}"
            ) from None
        if row is None:
            return
        last = row[0]
        yield row


def import_rows(
    conn: sqlite3.Connection,
    rows: Iterator[tuple[Any, ...]],
    branches: Sequence[Any],
    blobs: Iterator[tuple[str, int, bytes]],
) -> None:
    """Insert another store's blobs, branches and rows as they are (in the open transaction)."""
    conn.executemany("INSERT OR IGNORE INTO blobs (key, size, data) VALUES (?,?,?)", blobs)
    conn.executemany(
        "INSERT OR IGNORE INTO branches (name, parent, fork_seq, created_seq) VALUES (?,?,?,?)",
        [(b.name, b.parent, b.fork_seq, b.created_seq) for b in branches],
    )
    conn.executemany(INSERT_EVENTS, rows)


def check_file_end(conn: sqlite3.Connection, path: Path) -> None:
    """TamperDetected if bytes follow the database's last page (SQLite ignores them)."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    actual = path.stat().st_size
    # With WAL content not yet checkpointed the file can be shorter, never longer: the log
    # only grows, so the file is never truncated by a checkpoint.
    if actual > pages * size:
        raise TamperDetected(
            None, f"{actual - pages * size} bytes follow the database's last page (appended)"
        )


class SqliteSession:
    """`SqlSession` on the run file's connection (SQLite reads `?` placeholders natively)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        mutex: threading.RLock,
        *,
        readonly: bool,
        settle: Callable[[], None] | None = None,
    ) -> None:
        self._connection = conn
        self._mutex = mutex
        self.readonly = readonly
        #: Called before each use: the run store waits for its commit in flight there.
        self._settle = settle

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._settle is not None:
            self._settle()
        return self._connection

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only statement."""
        return [tuple(r) for r in self._conn.execute(sql, args).fetchall()]

    def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        """One writing statement, in its own transaction."""
        if self.readonly:
            raise PermissionError("the run database is open read-only")
        with self._mutex, transaction(self._conn):
            self._conn.execute(sql, args)

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One writing statement for each of `rows`, all in one transaction."""
        if self.readonly:
            raise PermissionError("the run database is open read-only")
        with self._mutex, transaction(self._conn):
            self._conn.executemany(sql, rows)

    def has_table(self, name: str) -> bool:
        """Whether the file has a table called `name`."""
        row = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)
        ).fetchone()
        return row is not None
