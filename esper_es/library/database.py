"""Where kernel artifacts and kernel outcomes are kept: the run database, and a shared library.

Both hold the same two tables (documented in docs/kernel-library.md):

- `kernel_artifacts`: kernel id -> the artifact's blob key, with the recipe spelled out
  (blueprint, version, config, shape kind, channels, init seed) and its parameter count;
- `kernel_outcomes`: one row per kernel that left its seed (or stayed for good): run, branch,
  seed, kernel id, blueprint, config, shape kind, `outcome` (`fossilized`, `culled`,
  `rolled_back`, `cancelled`), last measured contribution (or null), parameters, the steps it
  was germinated and ended at, and wall seconds it lived.

In the run database the artifact bytes are ordinary content-addressed blobs (`blobs`); the
shared library (`LibraryDatabase`, its own SQLite file: WAL, synchronous FULL, a busy timeout)
keeps them in its own `blobs` table. Several runs may read a library at once; every write is
one short `BEGIN IMMEDIATE` transaction, and rows are inserted once (`INSERT OR IGNORE`), so a
resumed run that records the same outcome again changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import attrs

from esper_es.errors import EXIT_USAGE, EsperError, NotARunDatabase
from esper_es.store.protocol import SqlSession
from esper_es.store.side_tables import KERNEL_TABLES
from esper_es.store.sqlite_files import SqliteSession
from esper_es.store.uri import readonly_uri

LIBRARY_FORMAT: Final = "esper-es-kernel-library"

LIBRARY_FORMAT_VERSION: Final = 1


class NotAKernelLibrary(EsperError):
    """`[library] path` names a file that is not a kernel library (exit 2; left untouched)."""

    exit_code = EXIT_USAGE

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"[library] path {path}: {reason}; nothing was written to it")


@attrs.frozen
class ArtifactRow:
    """An indexed artifact: its kernel id, blob key and recipe."""

    kernel_id: str
    blob_key: str
    blueprint: str
    version: int
    config: str
    shape_kind: str
    channels: int
    init_seed: int
    params: int


@attrs.frozen
class OutcomeRow:
    """What one kernel did in one run (see the module docstring)."""

    run_id: str
    branch: str
    seed: str
    kernel_id: str
    blueprint: str
    config: str
    shape_kind: str
    outcome: str
    contribution: float | None
    params: int
    germinated_step: int
    ended_step: int
    seconds: float


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection, lock: threading.RLock) -> Iterator[None]:
    with lock:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


class KernelTables:
    """The artifact index and the outcomes, on one SQL session (a run store or library file).

    The SQL is in the subset SQLite and PostgreSQL share, so a run on either backend keeps
    the same tables.
    """

    def __init__(self, session: SqlSession, *, writable: bool) -> None:
        self.session = session
        self.writable = writable
        if writable:
            for sql in KERNEL_TABLES:
                session.execute(sql)

    def index_artifact(self, row: ArtifactRow) -> None:
        """Index an artifact (kept as first recorded if the id is already there)."""
        self.session.execute(
            "INSERT INTO kernel_artifacts VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
            attrs.astuple(row),
        )

    def artifact(self, kernel_id: str) -> ArtifactRow | None:
        """The indexed artifact of `kernel_id`, if any."""
        rows = self._query(
            "kernel_artifacts", "SELECT * FROM kernel_artifacts WHERE kernel_id=?", (kernel_id,)
        )
        return ArtifactRow(*rows[0]) if rows else None

    def record_outcome(self, row: OutcomeRow) -> None:
        """Record a kernel's outcome once (a second record of the same key is ignored)."""
        self.session.execute(
            "INSERT INTO kernel_outcomes VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
            attrs.astuple(row),
        )

    def outcomes(self, shape_kind: str | None = None) -> list[OutcomeRow]:
        """Every recorded outcome (of one shape kind), in a stable order."""
        sql = "SELECT * FROM kernel_outcomes"
        args: tuple[Any, ...] = ()
        if shape_kind is not None:
            sql, args = sql + " WHERE shape_kind=?", (shape_kind,)
        order = " ORDER BY run_id, branch, ended_step, seed, kernel_id"
        rows = self._query("kernel_outcomes", sql + order, args)
        return [OutcomeRow(*r) for r in rows]

    def _query(self, table: str, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        # A database opened read-only that never had a kernel recorded lacks the tables.
        if not self.session.has_table(table):
            return []
        return self.session.query(sql, args)


_SQLITE_MAGIC: Final = b"SQLite format 3\x00"


def check_library_file(path: Path, *, create: bool) -> None:
    """Refuse, before touching it, a file at `path` that is not a kernel library.

    A missing or empty file is fine when the library may be created there. Anything else must
    already say it is a library: opening an unrelated SQLite file for writing would add tables
    to it and switch it to WAL, and a text file would fail half-way (SPEC §9: no command
    changes a file it was not asked to write).
    """
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        if not create:
            raise NotAKernelLibrary(str(path), "no such file")
        return
    if not path.is_file():
        raise NotAKernelLibrary(str(path), "not a regular file")
    with path.open("rb") as fh:
        if fh.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
            raise NotAKernelLibrary(str(path), "not an SQLite file")
    try:
        conn = sqlite3.connect(readonly_uri(path), uri=True, isolation_level=None)
        try:
            rows = conn.execute("SELECT value FROM meta WHERE key='format'").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        rows = []
    if rows != [(LIBRARY_FORMAT,)]:
        raise NotAKernelLibrary(str(path), "an SQLite file that is not an esper-es kernel library")


class LibraryDatabase(KernelTables):
    """A kernel library shared across runs: its own SQLite file (WAL, FULL, busy timeout)."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        check_library_file(self.path, create=not readonly)
        if readonly:
            conn = sqlite3.connect(
                readonly_uri(self.path), uri=True, isolation_level=None,
                check_same_thread=False,
            )  # fmt: skip
        else:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
        self.conn = conn
        self._lock = threading.RLock()
        super().__init__(SqliteSession(conn, self._lock, readonly=readonly), writable=not readonly)
        if not readonly:
            with _immediate(conn, self._lock):
                conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS blobs (key TEXT PRIMARY KEY, data BLOB NOT NULL)"
                )
                conn.executemany(
                    "INSERT OR IGNORE INTO meta VALUES (?,?)",
                    [("format", LIBRARY_FORMAT), ("format_version", str(LIBRARY_FORMAT_VERSION))],
                )
        meta = dict(self._query("meta", "SELECT key, value FROM meta", ()))
        if meta.get("format") != LIBRARY_FORMAT:
            conn.close()
            raise NotARunDatabase(str(self.path), "not an esper-es kernel library")
        if int(meta.get("format_version", "0")) > LIBRARY_FORMAT_VERSION:
            conn.close()
            raise NotARunDatabase(str(self.path), "kernel library format is newer; upgrade")

    def put_blob(self, data: bytes) -> str:
        """Store artifact bytes under their SHA-256; returns the key."""
        key = hashlib.sha256(data).hexdigest()
        with _immediate(self.conn, self._lock):
            self.conn.execute("INSERT OR IGNORE INTO blobs VALUES (?,?)", (key, data))
        return key

    def get_blob(self, key: str) -> bytes:
        """The bytes stored under `key`, checked against it."""
        rows = self._query("blobs", "SELECT data FROM blobs WHERE key=?", (key,))
        if not rows or hashlib.sha256(bytes(rows[0][0])).hexdigest() != key:
            raise KeyError(f"no intact blob {key} in {self.path}")
        return bytes(rows[0][0])

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def __enter__(self) -> LibraryDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
