"""The run store protocol: the seam between a run's log and the code that uses it (SPEC §11).

Two backends implement it: `RunDatabase` (SQLite, one file per run, the default) and
`PostgresStore` (PostgreSQL, one schema per run). `esper_es.store.backends.open_store` /
`create_store` pick one from the location the user gave (a path, or `postgresql://…`).
Everything above the store (command bus, trainer, replay, verify, report, CLI) sees only this.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from esper_es.core.envelope import NewEvent, RecordedEvent
from esper_es.store.records import MAIN, AppendResult, Branch

#: A raw `events` row, columns in `esper_es.store.encoding.COLUMNS` order.
Row = tuple[Any, ...]


class SqlSession(Protocol):
    """SQL on the store's side tables (signatures, kernel artifacts and outcomes).

    Statements are written in the subset SQLite and PostgreSQL share (`ON CONFLICT … DO
    NOTHING`, `DOUBLE PRECISION`, no vendor functions) with `?` placeholders. Never used
    for `events`, `blobs` or `branches`: those go through the store's own methods.
    """

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only statement."""
        ...

    def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        """One writing statement, in its own transaction."""
        ...

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One writing statement for each of `rows`, all in one transaction."""
        ...

    def has_table(self, name: str) -> bool:
        """Whether the run's store has a table called `name`."""
        ...


@runtime_checkable
class RunStore(Protocol):
    """One run's log: append events, read them back, store blobs, open branches."""

    run_id: str
    meta: dict[str, str]
    readonly: bool
    #: Where the run is, for people: a file path, or a PostgreSQL URL without its password.
    location: str
    #: `sqlite` or `postgresql`.
    backend: str

    @property
    def sql(self) -> SqlSession:
        """The side tables' SQL session."""
        ...

    def close(self) -> None:
        """Close, releasing the writer lock."""
        ...

    def __enter__(self) -> RunStore: ...

    def __exit__(self, *exc: object) -> None: ...

    # --- branches and heads
    def branches(self) -> list[Branch]:
        """Every branch, oldest first."""
        ...

    def branch(self, name: str) -> Branch:
        """The branch called `name` (KeyError naming the known ones)."""
        ...

    def lineage(self, branch: str) -> list[tuple[str, int | None]]:
        """`(branch, last seq visible from it)` from `branch` up to `main`."""
        ...

    def open_branch(self, name: str, parent: str, fork_seq: int) -> Branch:
        """Record a new branch forking `parent` after `fork_seq`."""
        ...

    def head(self) -> tuple[int, str]:
        """`(seq, hash)` of the last event, `(0, GENESIS)` when empty."""
        ...

    def head_seq(self, branch: str | None = None) -> int:
        """The last seq visible from `branch` (the whole log when None)."""
        ...

    def stream_version(self, stream: str, branch: str = MAIN) -> int:
        """The stream's current version on `branch` (0 if it has no events)."""
        ...

    # --- appending and reading
    def append(
        self, stream: str, expected_version: int, events: Sequence[NewEvent], *, branch: str = MAIN
    ) -> AppendResult:
        """Append `events` to `stream` atomically if it is at `expected_version`."""
        ...

    def append_batch(
        self, batches: Sequence[tuple[str, int, Sequence[NewEvent]]], *, branch: str = MAIN
    ) -> list[AppendResult]:
        """Append to several streams in one transaction: all of it, or none of it."""
        ...

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
        ...

    def rows(self, from_seq: int = 1) -> Iterator[Row]:
        """Every raw row from `from_seq` on, in seq order, unchecked (for verify and copy)."""
        ...

    def event_at(self, seq: int) -> Row | None:
        """The raw row at `seq`, if there is one."""
        ...

    def seq_of_hash(self, hash_hex: str) -> int | None:
        """The seq of the event whose hash is `hash_hex`, if any."""
        ...

    # --- blobs
    def put_blob(self, data: bytes) -> str:
        """Store `data` under its SHA-256 (hex); return the key."""
        ...

    def put_blobs(self, blobs: Sequence[bytes]) -> list[str]:
        """Store several blobs in one transaction; their keys in order."""
        ...

    def stage_blobs(self, blobs: Sequence[bytes], keys: Sequence[str] | None = None) -> list[str]:
        """Store blobs at the latest with the next append (one transaction for a snapshot and
        the event naming it); readable on this connection at once; their keys in order
        (`keys`: their SHA-256, when the caller computed them already)."""
        ...

    def has_blob(self, key: str) -> bool:
        """Whether a blob with this key is stored."""
        ...

    def stored_blobs(self, keys: Sequence[str]) -> set[str]:
        """Those of `keys` whose blobs are stored (or staged), in one query."""
        ...

    def get_blob(self, key: str) -> bytes:
        """The blob stored under `key`, checked against its hash."""
        ...

    def blob_rows(self) -> Iterator[tuple[str, int, bytes]]:
        """Every stored blob as `(key, size, data)`, unchecked (for verify and copy)."""
        ...

    # --- commits that overlap training (B2)
    def commit_in_background(self) -> None:
        """From now on, let appends commit on a background thread where the backend can (the
        next use of the store waits for the commit and raises its error); else nothing."""
        ...

    def appended_after(self, after: int, branch: str) -> list[RecordedEvent] | None:
        """The latest append's events, if they are every event after seq `after` on `branch`
        and this store kept them; None means: read them."""
        ...

    # --- what verify and copy need beyond the rows
    def missing_triggers(self) -> list[str]:
        """The append-only triggers that are not installed (empty when all are)."""
        ...

    def check_storage(self) -> None:
        """The backend's own integrity checks (TamperDetected naming what is wrong)."""
        ...

    def audit_lines(self) -> Iterator[str] | None:
        """The audit trail's lines, or None where this store keeps none."""
        ...

    def storage_bytes(self) -> int:
        """What the run occupies on its backend, in bytes (files, or tables and indexes)."""
        ...

    def import_log(
        self,
        rows: Iterator[Row],
        branches: Sequence[Branch],
        blobs: Iterator[tuple[str, int, bytes]],
    ) -> None:
        """Load another store's log as it is (hashes, times and all) into this empty store."""
        ...
