"""The run database (SPEC §3): one SQLite file per run, append-only, hash-chained.

Writes go through `append` / `append_batch`, one `BEGIN IMMEDIATE` transaction each, so a
batch is atomic and a crash loses at most the transaction in flight (WAL, synchronous=FULL).
One writer at a time is enforced by an exclusive `flock` on `<db>.lock`; readers open the
file read-only and never take it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import sqlite_utils

from esper_es import __version__
from esper_es.core.canonical import canonical_json, encode_string, loads
from esper_es.core.envelope import NewEvent, RecordedEvent
from esper_es.core.events import from_payload, to_payload
from esper_es.core.upcasting import upcast
from esper_es.errors import (
    ConcurrencyError,
    DatabaseLocked,
    EsperError,
    NotARunDatabase,
    SchemaViolation,
    StorageError,
    TamperDetected,
)
from esper_es.store import schemas
from esper_es.store.audit import AuditTrail
from esper_es.store.chain import GENESIS, row_hash
from esper_es.store.uri import readonly_uri

FORMAT = "esper-es run database"
FORMAT_VERSION = 1
MAIN = "main"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_ID_CHUNK = 900  # ids per `IN (...)` query, well under SQLite's variable limit

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
TRIGGERS = tuple(spec[0] for spec in _TRIGGER_SPECS)

_INSERT = (
    "INSERT INTO events (seq, event_id, run_id, branch, stream, stream_version, type,"
    " schema_version, payload, causation_id, correlation_id, recorded_at, prev_hash, hash)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_COLUMNS = (
    "seq, event_id, run_id, branch, stream, stream_version, type, schema_version, payload,"
    " causation_id, correlation_id, recorded_at, prev_hash, hash"
)


@attrs.frozen(slots=True)
class AppendResult:
    """What one stream's append did: the seqs written (or found, when acknowledged)."""

    stream: str
    seqs: tuple[int, ...]
    version: int
    acknowledged: bool = False


@attrs.frozen(slots=True)
class Branch:
    """A line of history: `main`, or one opened by a rollback at `fork_seq` of `parent`."""

    name: str
    parent: str | None
    fork_seq: int
    created_seq: int


def now_iso() -> str:
    """Wall-clock time for people (never read by replay)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


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


class RunDatabase:
    """One run's database: append events, read them back, store blobs."""

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
        self.readonly = readonly
        self._conn = conn
        self.db = sqlite_utils.Database(conn)
        self._lock_fd = lock_fd
        self._audit = audit
        self._mutex = threading.RLock()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self.meta: dict[str, str] = meta
        self.run_id: str = meta["run_id"]
        self._versions: dict[tuple[str, str], int] = {}
        self._branches: dict[str, Branch] = {}
        self._load_branches()

    # --- opening ----------------------------------------------------------------------

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], run_id: str, *, audit: bool = True
    ) -> RunDatabase:
        """Create a new run database at `path` and open it for writing."""
        p = Path(path)
        if p.exists() and p.stat().st_size > 0 and not _never_committed(p):
            raise NotARunDatabase(str(p), "file already exists; choose a new path")
        p.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = _take_writer_lock(p)
        try:
            if p.exists() and p.stat().st_size > 0:
                # Checked again under the lock: a run killed before its first commit left a
                # database that holds no event (at most orphan blobs). Replacing it loses
                # nothing, and refusing would block the path for good.
                if not _never_committed(p):
                    raise NotARunDatabase(str(p), "file already exists; choose a new path")
                for suffix in ("-wal", "-shm", ".audit.jsonl"):
                    Path(str(p) + suffix).unlink(missing_ok=True)
            # Built beside the target and renamed into place once committed, so a crash during
            # creation never leaves a file at `path` that is not a whole, empty run database.
            staging = p.with_name(p.name + ".creating")
            staging.unlink(missing_ok=True)
            _initialise(staging, run_id)
            os.replace(staging, p)
            conn = _connect(p)
        except BaseException:
            _release_writer_lock(lock_fd)
            raise
        trail = AuditTrail(audit_path(p), run_id) if audit else None
        return cls(p, conn, readonly=False, lock_fd=lock_fd, audit=trail)

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
                probe = _connect(p, readonly=True)
                try:
                    _check_format(p, probe)
                finally:
                    probe.close()
            except sqlite3.DatabaseError as exc:
                raise sqlite_failure(p, exc) from None
        lock_fd = None if readonly else _take_writer_lock(p)
        conn: sqlite3.Connection | None = None
        try:
            conn = _connect(p, readonly=readonly)
            _check_format(p, conn)
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
            _release_writer_lock(lock_fd)
            if isinstance(exc, sqlite3.DatabaseError):
                raise sqlite_failure(p, exc) from None
            raise

    def close(self) -> None:
        """Checkpoint the WAL into the main file, close, and release the writer lock."""
        with self._mutex:
            if self._conn is None:
                return
            if not self.readonly:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
            self._conn = None  # type: ignore[assignment]
            if self._audit is not None:
                self._audit.close()
            _release_writer_lock(self._lock_fd)
            self._lock_fd = None

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
        rows = self._conn.execute("SELECT name, parent, fork_seq, created_seq FROM branches")
        self._branches = {r[0]: Branch(*r) for r in rows}

    def branches(self) -> list[Branch]:
        """Every branch, oldest first."""
        return sorted(self._branches.values(), key=lambda b: (b.created_seq, b.name))

    def branch(self, name: str) -> Branch:
        """The branch called `name`."""
        try:
            return self._branches[name]
        except KeyError:
            known = ", ".join(sorted(self._branches))
            raise KeyError(f"no branch {name!r}; branches: {known}") from None

    def lineage(self, branch: str) -> list[tuple[str, int | None]]:
        """`(branch, last seq visible from it)` from `branch` up to `main`; None = unbounded."""
        out: list[tuple[str, int | None]] = []
        bound: int | None = None
        name: str | None = branch
        while name is not None:
            b = self.branch(name)
            out.append((name, bound))
            bound = b.fork_seq if bound is None else min(bound, b.fork_seq)
            name = b.parent
        return out

    def open_branch(self, name: str, parent: str, fork_seq: int) -> Branch:
        """Record a new branch forking `parent` after `fork_seq` (used by rollback)."""
        self._require_writer()
        if name in self._branches:
            raise ValueError(f"branch {name!r} already exists")
        self.branch(parent)
        head, _ = self.head()
        if not 0 <= fork_seq <= head:
            raise ValueError(f"fork seq {fork_seq} is outside 0..{head}")
        with self._mutex, _transaction(self._conn):
            self._conn.execute(
                "INSERT INTO branches (name, parent, fork_seq, created_seq) VALUES (?,?,?,?)",
                (name, parent, fork_seq, head),
            )
        self._load_branches()
        return self._branches[name]

    def head(self) -> tuple[int, str]:
        """`(seq, hash)` of the last event in the file, `(0, GENESIS)` when empty."""
        row = self._conn.execute(
            "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return (row[0], row[1]) if row else (0, GENESIS)

    def head_seq(self, branch: str | None = None) -> int:
        """The last seq visible from `branch` (the whole file when None)."""
        if branch is None:
            return self.head()[0]
        best = 0
        for name, bound in self.lineage(branch):
            # Walked back from the end by rowid (`+branch`: not through the branch's index
            # entries, which MAX would read all of): a branch's newest event is near the end.
            sql = "SELECT seq FROM events WHERE +branch=?"
            args: list[Any] = [name]
            if bound is not None:
                sql += " AND seq<=?"
                args.append(bound)
            row = self._conn.execute(sql + " ORDER BY seq DESC LIMIT 1", args).fetchone()
            best = max(best, row[0] if row else 0)
        return best

    def stream_version(self, stream: str, branch: str = MAIN) -> int:
        """The stream's current version on `branch` (0 if it has no events)."""
        key = (branch, stream)
        cached = self._versions.get(key)
        if cached is not None:
            return cached
        version = 0
        for name, bound in self.lineage(branch):
            sql = "SELECT MAX(stream_version) FROM events WHERE branch=? AND stream=?"
            args: list[Any] = [name, stream]
            if bound is not None:
                sql += " AND seq<=?"
                args.append(bound)
            found = self._conn.execute(sql, args).fetchone()[0]
            if found is not None:
                version = found
                break
        if not self.readonly:
            self._versions[key] = version
        return version

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
        prepared = [
            (stream, expected, [_encode(e, stream) for e in evs])
            for stream, expected, evs in batches
        ]
        with self._mutex:
            try:
                return self._append_locked(prepared, branch, look_up_ids=False)
            except (sqlite3.IntegrityError, ConcurrencyError):
                # Optimistic path failed: an id is already stored (a retried command is then
                # acknowledged), or versions moved. Decide again, looking every id up first.
                return self._append_locked(prepared, branch, look_up_ids=True)

    def _append_locked(
        self,
        prepared: list[tuple[str, int, list[tuple[NewEvent, str, int, str]]]],
        branch: str,
        *,
        look_up_ids: bool,
    ) -> list[AppendResult]:
        conn = self._conn
        recorded_at = now_iso()
        rows: list[tuple[Any, ...]] = []
        results: list[AppendResult] = []
        new_versions: dict[str, int] = {}
        with _transaction(conn):
            # The unique index on event_id refuses a stored id anyway; looking ids up first
            # (~1.5 µs an event) is only needed to tell an acknowledgement from a conflict.
            known = (
                self._existing([enc[0].event_id for _, _, encs in prepared for enc in encs])
                if look_up_ids
                else {}
            )
            seq, prev = self.head()
            run_id = self.run_id
            for stream, expected, encs in prepared:
                acked = _acknowledged(stream, encs, known)
                if acked is not None:
                    results.append(acked)
                    continue
                actual = new_versions.get(stream)
                if actual is None:
                    actual = self.stream_version(stream, branch)
                if actual != expected:
                    raise ConcurrencyError(stream, expected, actual)
                seqs = []
                for ne, type_name, version, payload in encs:
                    seq += 1
                    actual += 1
                    h = row_hash(
                        prev, seq, ne.event_id, run_id, branch, stream, actual, type_name,
                        version, payload, ne.causation_id, ne.correlation_id, recorded_at,
                    )  # fmt: skip
                    rows.append(
                        (seq, ne.event_id, run_id, branch, stream, actual, type_name, version,
                         payload, ne.causation_id, ne.correlation_id, recorded_at, prev, h)
                    )  # fmt: skip
                    prev = h
                    seqs.append(seq)
                new_versions[stream] = actual
                results.append(AppendResult(stream, tuple(seqs), actual))
            if rows:
                conn.executemany(_INSERT, rows)
        for stream, version in new_versions.items():
            self._versions[(branch, stream)] = version
        if self._audit is not None and rows:
            self._audit.record(rows)
        return results

    def _existing(self, ids: list[str]) -> dict[str, tuple[str, str, str, int]]:
        found: dict[str, tuple[str, str, str, int]] = {}
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
            parts = []
            for name, bound in self.lineage(branch):
                if bound is None:
                    parts.append(f"({column} = ?)")
                    args.append(name)
                else:
                    parts.append(f"({column} = ? AND seq <= ?)")
                    args.extend([name, bound])
            clauses.append("(" + " OR ".join(parts) + ")")
        sql = f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(clauses)} ORDER BY seq"
        for row in self._conn.execute(sql, args):
            yield decode_row(row)

    # --- blobs ------------------------------------------------------------------------

    def put_blob(self, data: bytes) -> str:
        """Store `data` under its SHA-256 (hex), once however often put; return the key."""
        self._require_writer()
        key = hashlib.sha256(data).hexdigest()
        with self._mutex, _transaction(self._conn):
            self._conn.execute(
                "INSERT OR IGNORE INTO blobs (key, size, data) VALUES (?,?,?)",
                (key, len(data), data),
            )
        return key

    def put_blobs(self, blobs: Sequence[bytes]) -> list[str]:
        """Store several blobs in one transaction (one fsync); returns their keys in order."""
        self._require_writer()
        rows = [(hashlib.sha256(b).hexdigest(), len(b), b) for b in blobs]
        if rows:
            with self._mutex, _transaction(self._conn):
                self._conn.executemany(
                    "INSERT OR IGNORE INTO blobs (key, size, data) VALUES (?,?,?)", rows
                )
        return [r[0] for r in rows]

    def has_blob(self, key: str) -> bool:
        """Whether a blob with this key is stored."""
        return self._conn.execute("SELECT 1 FROM blobs WHERE key=?", (key,)).fetchone() is not None

    def get_blob(self, key: str) -> bytes:
        """The blob stored under `key`, checked against its hash."""
        row = self._conn.execute("SELECT data FROM blobs WHERE key=?", (key,)).fetchone()
        if row is None:
            raise KeyError(f"no blob {key}")
        data = bytes(row[0])
        if hashlib.sha256(data).hexdigest() != key:
            raise TamperDetected(None, f"blob {key} does not match its hash")
        return data

    # --- helpers ----------------------------------------------------------------------

    def _require_writer(self) -> None:
        if self.readonly:
            raise PermissionError(f"{self.path} is open read-only")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed in canonical JSON")


# `canonical.loads` builds a JSONDecoder on every call (json.loads does, given any keyword);
# one built once parses the same way, refusing the same constants, ~1 µs an event faster.
_DECODE = json.JSONDecoder(parse_constant=_refuse_constant).decode


def decode_row(row: Sequence[Any]) -> RecordedEvent:
    """A stored row as a RecordedEvent: payload parsed, upcast and checked against its schema."""
    (seq, eid, run_id, branch, stream, sv, type_name, version, payload_text,
     causation, correlation, recorded_at, prev_hash, h) = row  # fmt: skip
    payload = _DECODE(payload_text) if type(payload_text) is str else loads(payload_text)
    current, payload = upcast(type_name, version, payload)
    try:
        schemas.validate(type_name, current, payload)
    except SchemaViolation as exc:
        raise TamperDetected(seq, str(exc)) from None
    return RecordedEvent(
        seq, eid, run_id, branch, stream, sv, type_name, version, payload,
        from_payload(type_name, payload), causation, correlation, recorded_at, prev_hash, h,
    )  # fmt: skip


def _flat_encoder() -> Callable[[Any, int], Any] | None:
    """json's C encoder, built once, canonical settings, without the circular-reference check.

    `canonical_json` builds this encoder afresh (with a new markers dict) on every call: ~0.7 µs
    of its ~1.5 µs. Skipping the markers is safe only for payloads that cannot hold a container,
    i.e. already validated against a flat schema (`schemas.is_flat`).
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has it
        return None
    enc = json.JSONEncoder(ensure_ascii=False, allow_nan=False, sort_keys=True)
    return make(None, enc.default, encode_string, None, ":", ",", True, False, False)  # type: ignore[no-any-return]


_FLAT_ENCODE = _flat_encoder()


def _encode(ne: NewEvent, stream: str) -> tuple[NewEvent, str, int, str]:
    event = ne.event
    if event.stream() != stream:
        raise ValueError(f"{event.TYPE} belongs to stream {event.stream()!r}, not {stream!r}")
    type_name, version = event.TYPE, event.VERSION
    payload = to_payload(event)
    schemas.validate(type_name, version, payload)
    try:
        if _FLAT_ENCODE is not None and schemas.is_flat(type_name, version):
            text = "".join(_FLAT_ENCODE(payload, 0))
        else:
            text = canonical_json(payload)
    except ValueError as exc:
        raise SchemaViolation(type_name, version, str(exc)) from None
    return ne, type_name, version, text


def _acknowledged(
    stream: str,
    encs: list[tuple[NewEvent, str, int, str]],
    known: dict[str, tuple[str, str, str, int]],
) -> AppendResult | None:
    """None if none of these events is stored; an acknowledgement if all are, identically."""
    hits = [known.get(ne.event_id) for ne, _, _, _ in encs]
    if not any(hits):
        return None
    for (ne, type_name, _, payload), hit in zip(encs, hits, strict=True):
        if hit is None or hit[:3] != (stream, type_name, payload):
            raise ConcurrencyError(
                stream,
                None,
                None,
                f"event id {ne.event_id!r} is already used by a different event"
                if hit is not None
                else f"batch mixes stored and new events (first new: {ne.event_id!r})",
            )
    seqs = tuple(h[3] for h in hits if h is not None)
    return AppendResult(stream, seqs, -1, acknowledged=True)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _initialise(path: Path, run_id: str) -> None:
    """Write an empty run database (schema, meta, `main` branch, triggers) at `path`."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = FULL")
        db = sqlite_utils.Database(conn)
        with _transaction(conn):
            db.table("meta").create({"key": str, "value": str}, pk="key")
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
            db.table("events").create(
                {
                    "seq": int,
                    "event_id": str,
                    "run_id": str,
                    "branch": str,
                    "stream": str,
                    "stream_version": int,
                    "type": str,
                    "schema_version": int,
                    "payload": str,
                    "causation_id": str,
                    "correlation_id": str,
                    "recorded_at": str,
                    "prev_hash": str,
                    "hash": str,
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
            conn.execute(
                "INSERT INTO branches (name, parent, fork_seq, created_seq) VALUES (?,?,?,?)",
                (MAIN, None, 0, 0),
            )
            for name, op, table, why in _TRIGGER_SPECS:
                conn.execute(_TRIGGER_SQL.format(name=name, op=op, table=table, why=why))
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


def _connect_readonly(path: Path) -> sqlite3.Connection:
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


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        return _connect_readonly(path)
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
    "events": frozenset(c.strip() for c in _COLUMNS.split(",")),
    "blobs": frozenset({"key", "size", "data"}),
    "branches": frozenset({"name", "parent", "fork_seq", "created_seq"}),
}


def _check_format(path: Path, conn: sqlite3.Connection) -> None:
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


def _never_committed(path: Path) -> bool:
    """True for an esper-es run database in which no event was ever committed."""
    try:
        check_run_database_file(path)
        conn = _connect(path, readonly=True)
        try:
            _check_format(path, conn)
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0]) == 0
        finally:
            conn.close()
    except (EsperError, sqlite3.DatabaseError):
        return False


def _take_writer_lock(path: Path) -> int:
    lp = lock_path(path)
    fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode("utf-8", "replace").strip()
        os.close(fd)
        raise DatabaseLocked(str(path), f"pid {holder}" if holder else "") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _release_writer_lock(fd: int | None) -> None:
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
