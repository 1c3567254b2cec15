"""The SQLite run store (SPEC §3): one file per run, append-only, hash-chained.

Writes go through `append` / `append_batch`, one `BEGIN IMMEDIATE` transaction each, so a
batch is atomic and a crash loses at most the transaction in flight (WAL, synchronous=FULL).
One writer at a time is enforced by an exclusive `flock` on `<db>.lock`; readers open the
file read-only and never take it. File handling lives in `sqlite_files`, the append decision
(shared with PostgreSQL) in `appending`, the raw reads of `verify` and `copy` in
`sqlite_inspection`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlite_utils

from esper_es.core.envelope import NewEvent, RecordedEvent
from esper_es.errors import ConcurrencyError, NotARunDatabase
from esper_es.store.appending import Prepared, parsed_payloads, plan_for, prepare
from esper_es.store.audit import AuditTrail
from esper_es.store.branching import BranchIndex
from esper_es.store.chain import GENESIS
from esper_es.store.commit_writer import BackgroundCommits, CommitWriter, LastAppend
from esper_es.store.encoding import COLUMNS, decode_row
from esper_es.store.encoding import encode as _encode
from esper_es.store.known_ids import KnownIds
from esper_es.store.protocol import Row
from esper_es.store.records import (
    FORMAT,
    FORMAT_VERSION,
    MAIN,
    TRIGGERS,
    AppendResult,
    Branch,
    now_iso,
)
from esper_es.store.sqlite_blobs import SqliteBlobs
from esper_es.store.sqlite_files import (
    INSERT_EVENTS,
    SqliteSession,
    audit_path,
    check_format,
    check_run_database_file,
    connect,
    import_rows,
    initialise,
    iter_rows,
    lock_path,
    never_committed,
    release_writer_lock,
    sqlite_failure,
    take_writer_lock,
    transaction,
)
from esper_es.store.sqlite_inspection import SqliteInspection

#: Names other modules (and tests) import from here.
__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAIN",
    "TRIGGERS",
    "AppendResult",
    "Branch",
    "RunDatabase",
    "_encode",
    "audit_path",
    "check_run_database_file",
    "decode_row",
    "lock_path",
    "now_iso",
    "sqlite_failure",
    "transaction",
]

_ID_CHUNK = 900  # ids per `IN (...)` query, well under SQLite's variable limit


class RunDatabase(BackgroundCommits, SqliteBlobs, SqliteInspection, BranchIndex):
    """The SQLite run store: one file per run (the default backend of `RunStore`)."""

    backend = "sqlite"

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        *,
        readonly: bool,
        lock_fd: int | None,
        audit: AuditTrail | None,
    ) -> None:
        self.path = path
        self.location = str(path)
        self.readonly = readonly
        #: The connection itself; everything but the background commit uses `_conn`.
        self._c: sqlite3.Connection | None = conn
        #: Runs commits in the background once `commit_in_background` is called.
        self._writer: CommitWriter | None = None
        #: `(head before, branch, rows, parsed payloads)` of the latest append (`appended_after`).
        self._last_append: LastAppend | None = None
        self.db = sqlite_utils.Database(conn)
        self._lock_fd = lock_fd
        self._audit = audit
        self._mutex = threading.RLock()
        #: Blobs written with the next transaction (`stage_blobs`), by key.
        self._staged: dict[str, bytes] = {}
        #: Every blob key the file holds, when known without asking it (`sqlite_blobs`).
        self._blob_keys: set[str] | None = None
        #: Every event id the file holds, when known without asking it (`store.known_ids`).
        self._known_ids: KnownIds | None = None
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self.meta: dict[str, str] = meta
        self.run_id: str = meta["run_id"]
        self._versions: dict[tuple[str, str], int] = {}
        #: `(seq, hash)` of the file's last event as this writer last committed it: the writer
        #: lock makes it the only one appending, so the file's head moves only through
        #: `_committed` (and `import_log`, which forgets it). Never set when read-only.
        self._head: tuple[int, str] | None = None
        self._load_branches()
        self._sql = SqliteSession(conn, self._mutex, readonly=readonly, settle=self._settle)

    # --- opening ----------------------------------------------------------------------

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], run_id: str, *, audit: bool = True
    ) -> RunDatabase:
        """Create a new run database at `path` and open it for writing."""
        p = Path(path)
        if p.exists() and p.stat().st_size > 0 and not never_committed(p):
            raise NotARunDatabase(str(p), "file already exists; choose a new path")
        p.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = take_writer_lock(p)
        try:
            if p.exists() and p.stat().st_size > 0:
                # Checked again under the lock: a run killed before its first commit left a
                # database that holds no event (at most orphan blobs). Replacing it loses
                # nothing, and refusing would block the path for good.
                if not never_committed(p):
                    raise NotARunDatabase(str(p), "file already exists; choose a new path")
                for suffix in ("-wal", "-shm", ".audit.jsonl"):
                    Path(str(p) + suffix).unlink(missing_ok=True)
            # Built beside the target and renamed into place once committed, so a crash during
            # creation never leaves a file at `path` that is not a whole, empty run database.
            staging = p.with_name(p.name + ".creating")
            staging.unlink(missing_ok=True)
            initialise(staging, run_id)
            os.replace(staging, p)
            conn = connect(p)
        except BaseException:
            release_writer_lock(lock_fd, p)
            raise
        trail = AuditTrail(audit_path(p), run_id) if audit else None
        db = cls(p, conn, readonly=False, lock_fd=lock_fd, audit=trail)
        db._blob_keys = set()  # a new file: it holds the blobs this connection writes, only
        db._known_ids = KnownIds()  # and the events
        db._head = (0, GENESIS)  # none yet: its first reads need no query (B2)
        return db

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, readonly: bool = False, audit: bool = True
    ) -> RunDatabase:
        """Open an existing run database, for writing (one writer at a time) or read-only."""
        p = Path(path)
        check_run_database_file(p)
        if not readonly:
            # Refuse a foreign file before touching it: a writer open switches it to WAL.
            try:
                probe = connect(p, readonly=True)
                try:
                    check_format(p, probe)
                finally:
                    probe.close()
            except sqlite3.DatabaseError as exc:
                raise sqlite_failure(p, exc) from None
        lock_fd = None if readonly else take_writer_lock(p)
        conn: sqlite3.Connection | None = None
        try:
            conn = connect(p, readonly=readonly)
            check_format(p, conn)
            row = conn.execute("SELECT value FROM meta WHERE key='run_id'").fetchone()
            if row is None or not isinstance(row[0], str):
                raise NotARunDatabase(str(p), "its meta table names no run")
            trail = AuditTrail(audit_path(p), row[0]) if (audit and not readonly) else None
            return cls(p, conn, readonly=readonly, lock_fd=lock_fd, audit=trail)
        except BaseException as exc:
            # Closed now, not at garbage collection: the connection's close is what removes
            # the `-wal` / `-shm` files it opened beside a file that was refused.
            if conn is not None:
                conn.close()
            release_writer_lock(lock_fd, p)
            if isinstance(exc, sqlite3.DatabaseError):
                raise sqlite_failure(p, exc) from None
            raise

    def close(self) -> None:
        """Checkpoint the WAL into the main file, close, and release the writer lock.

        Waits for a commit in flight first; its error, if nobody has seen it yet, is raised
        once the file is closed and the lock released.
        """
        failure: BaseException | None = None
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except BaseException as exc:
                failure = exc
        with self._mutex:
            conn = self._c
            if conn is None:
                return
            try:
                if not self.readonly:
                    if self._staged and failure is None:
                        with transaction(conn):
                            self._write_staged(conn)
                        self._committed_blobs(list(self._staged))
                        self._staged.clear()
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
                self._c = None
                self._head = None
                if self._audit is not None:
                    self._audit.close()
                release_writer_lock(self._lock_fd, self.path)
                self._lock_fd = None
        if failure is not None:
            raise failure

    def __enter__(self) -> RunDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw SQLite connection (read it; never write through it)."""
        return self._conn

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
        with self._mutex, transaction(self._conn):
            self._conn.execute(
                "INSERT INTO branches (name, parent, fork_seq, created_seq) VALUES (?,?,?,?)",
                (name, parent, fork_seq, head),
            )
        self._load_branches()
        return self._branches[name]

    def head(self) -> tuple[int, str]:
        """`(seq, hash)` of the last event in the file, `(0, GENESIS)` when empty."""
        if self._head is not None:
            # Known without a query (each commit planned on it used to read it: B2). A commit
            # in flight is waited for first, as a query would, and raises its error here.
            self._settle()
            return self._head
        row = self._conn.execute(
            "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        head = (row[0], row[1]) if row else (0, GENESIS)
        if not self.readonly:
            self._head = head
        return head

    def head_seq(self, branch: str | None = None) -> int:
        """The last seq visible from `branch` (the whole file when None)."""
        if branch is None or (branch == MAIN and self._head is not None and self._only_main()):
            # With `main` the only branch, every event is on it: the file's head, known.
            return self.head()[0]
        best = 0
        # Walked back from the end by rowid (`+branch`: not through the branch's index
        # entries, which MAX would read all of): a branch's newest event is near the end.
        for cond, args in self.lineage_levels(branch, column="+branch"):
            sql = f"SELECT seq FROM events WHERE {cond} ORDER BY seq DESC LIMIT 1"
            row = self._conn.execute(sql, args).fetchone()
            best = max(best, row[0] if row else 0)
        return best

    def stream_version(self, stream: str, branch: str = MAIN) -> int:
        """The stream's current version on `branch` (0 if it has no events)."""
        key = (branch, stream)
        cached = self._versions.get(key)
        if cached is not None:
            return cached
        version = 0
        if self._known_empty():
            return version
        for cond, args in self.lineage_levels(branch):
            sql = f"SELECT MAX(stream_version) FROM events WHERE stream = ? AND {cond}"
            found = self._conn.execute(sql, [stream, *args]).fetchone()[0]
            if found is not None:
                version = found
                break
        if not self.readonly:
            self._versions[key] = version
        return version

    def _known_empty(self) -> bool:
        """Whether this writer knows without a query that the file holds no event yet."""
        return self._head is not None and self.head()[0] == 0

    def _only_main(self) -> bool:
        return len(self._branches) == 1 and MAIN in self._branches

    # --- appending --------------------------------------------------------------------

    def append(
        self,
        stream: str,
        expected_version: int,
        events: Sequence[NewEvent],
        *,
        branch: str = MAIN,
    ) -> AppendResult:
        """Append `events` to `stream` atomically if it is at `expected_version`."""
        return self.append_batch([(stream, expected_version, events)], branch=branch)[0]

    def append_batch(
        self,
        batches: Sequence[tuple[str, int, Sequence[NewEvent]]],
        *,
        branch: str = MAIN,
    ) -> list[AppendResult]:
        """Append to several streams in one transaction: all of it, or none of it."""
        self._require_writer()
        self.branch(branch)
        prepared = prepare(batches)
        with self._mutex:
            try:
                return self._append_locked(prepared, branch, look_up_ids=False)
            except (sqlite3.IntegrityError, ConcurrencyError):
                # Optimistic path failed: an id is already stored (a retried command is then
                # acknowledged), or versions moved. Decide again, looking every id up first.
                return self._append_locked(prepared, branch, look_up_ids=True)

    def _append_locked(
        self, prepared: Prepared, branch: str, *, look_up_ids: bool
    ) -> list[AppendResult]:
        conn = self._conn
        if self._writer is not None:
            return self._append_in_background(conn, prepared, branch)
        with transaction(conn):
            # The unique index on event_id refuses a stored id anyway; looking ids up first
            # (~1.5 µs an event) is only needed to tell an acknowledgement from a conflict.
            head = self.head()
            rows, results, new_versions = self._plan(prepared, branch, head, look_up_ids)
            if rows:
                conn.executemany(INSERT_EVENTS, rows)
            self._write_staged(conn)
        self._committed_blobs(list(self._staged))
        self._staged.clear()
        self._last_append = (head[0], branch, rows, parsed_payloads(prepared, results))
        self._committed(branch, head[0], rows, new_versions)
        return results

    def _plan(
        self, prepared: Prepared, branch: str, head: tuple[int, str], look_up_ids: bool
    ) -> tuple[list[Row], list[AppendResult], dict[str, int]]:
        return plan_for(self, prepared, branch, head, look_up_ids)

    def _committed(
        self, branch: str, head: int, rows: list[Row], new_versions: dict[str, int]
    ) -> None:
        if rows:
            # After the commit only: a failed one leaves the file's head, and this, as they were.
            self._head = (rows[-1][0], rows[-1][-1])
            if self._known_ids is not None:
                self._known_ids.committed(row[1] for row in rows)
        for stream, version in new_versions.items():
            self._versions[(branch, stream)] = version
        if self._audit is not None and rows:
            self._audit.record(rows)

    def _existing(self, ids: list[str]) -> dict[str, tuple[str, str, str, int]]:
        found: dict[str, tuple[str, str, str, int]] = {}
        if self._known_ids is not None:
            ids = list(self._known_ids.to_ask(ids))
        for i in range(0, len(ids), _ID_CHUNK):
            chunk = ids[i : i + _ID_CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in self._conn.execute(
                "SELECT event_id, stream, type, payload, seq FROM events"
                f" WHERE event_id IN ({marks})",
                chunk,
            ):
                found[row[0]] = (row[1], row[2], row[3], row[4])
        return found

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
        """Events in seq order, upcast and schema-checked; `branch=None` reads the whole file."""
        if self._known_empty():
            return  # a new run's first reads (its bus, the recorder): nothing to ask the file
        clauses = ["seq >= ?"]
        args: list[Any] = [from_seq]
        if to_seq is not None:
            clauses.append("seq <= ?")
            args.append(to_seq)
        if stream is not None:
            clauses.append("stream = ?")
            args.append(stream)
        if types:
            clauses.append(f"type IN ({','.join('?' * len(types))})")
            args.extend(types)
        if branch is not None:
            # Without a stream the seq range is the selective term: `+branch` keeps the branch
            # out of index choice, so SQLite walks the rowid range instead of every index entry
            # of the branch plus a sort (whose cost grew with the log: 111 ms a boundary at
            # 1 M events). With a stream, the (branch, stream, version) index is the right one.
            column = "branch" if stream is not None else "+branch"
            visible, visible_args = self.lineage_condition(branch, column=column)
            clauses.append(visible)
            args.extend(visible_args)
        sql = f"SELECT {COLUMNS} FROM events WHERE {' AND '.join(clauses)} ORDER BY seq"
        for row in self._conn.execute(sql, args):
            yield decode_row(row)

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
        with self._mutex, transaction(self._conn):
            import_rows(self._conn, rows, branches, blobs)
        self._blob_keys = None  # another store's blobs, not listed here: ask the file
        if self._known_ids is not None:
            self._known_ids.forget()  # and its events
        if self._audit is not None:
            # After the commit, as for every append: the trail may lag the log, never lead it.
            batch = []
            for row in iter_rows(self._conn, 1):
                batch.append(row)
                if len(batch) >= 10_000:
                    self._audit.record(batch)
                    batch = []
            self._audit.record(batch)
        self._versions.clear()
        self._head = None
        self._last_append = None
        self._load_branches()

    # --- helpers ----------------------------------------------------------------------

    def _require_writer(self) -> None:
        if self.readonly:
            raise PermissionError(f"{self.path} is open read-only")
