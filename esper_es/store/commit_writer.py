"""Commits in the background: one writer thread that runs a store's transactions in order.

Why (B2): a trainer commits once per epoch, and each commit is an SQLite transaction ending in
an fsync (`synchronous=FULL`): milliseconds of waiting, plus the copy of a snapshot's bytes
into the WAL. None of that needs the training thread. SQLite releases the GIL while it steps a
statement, writes and syncs, so on a second core the commit overlaps the next epoch's steps.

What stays on the caller's thread, so that nothing of the log's content depends on timing:
encoding, schema checks, hash chaining and the choice of seqs (`appending.plan_append`) are
done before the hand-off; the thread only inserts the rows it is given and commits them.

Why this is safe:
- At most one commit is in flight. Every use of the store's connection first waits for it
  (`RunDatabase._conn`), and re-raises its error: a failed commit stops the run with its typed
  error at the latest at the next boundary (which reads the store for its checkpoint) or at
  `close`, and nothing reads a state the file does not hold yet.
- The one thing used before the commit lands is the rows of the latest append themselves
  (`RunDatabase.appended_after`): the trainer projects its boundary's events from them instead
  of reading them back, i.e. the model may run ahead of the file by one boundary.
- A crash in that window (kill -9, power loss) loses the boundary in flight, exactly as a crash
  during a synchronous commit would: its events are not in the file, the file is whole (one
  transaction), and `resume` re-executes from the last snapshot, deterministically, to the
  same log. The audit trail is written after its commit (here, on this thread), so it may lag
  the log, never lead it.
"""

from __future__ import annotations

import _thread
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esper_es.core.envelope import RecordedEvent
from esper_es.errors import ConcurrencyError
from esper_es.store.appending import Prepared, parsed_payloads
from esper_es.store.encoding import decode_row
from esper_es.store.protocol import Row
from esper_es.store.records import AppendResult
from esper_es.store.sqlite_blobs import INSERT_BLOB
from esper_es.store.sqlite_files import INSERT_EVENTS, sqlite_failure, transaction

#: The latest append, for `appended_after`: the head it was planned on, its branch, its rows,
#: and each row's payload as `encode` kept it (None where the text must be parsed).
LastAppend = tuple[int, str, list[Row], list["dict[str, Any] | None"]]

_CHECKPOINT_BYTES = 1 << 20
#: Bound parameters per statement in `_insert_all` (SQLite's limit is 32 766 since 3.32).
_MAX_VARIABLES = 999


def _insert_all(conn: sqlite3.Connection, insert: str, rows: Sequence[Sequence[Any]]) -> None:
    """`conn.executemany(insert, rows)` as multi-row INSERTs (same rows, same order).

    `executemany` steps once per row, letting go of the GIL and taking it back each time; on
    this thread every retake may wait for the training thread, and wakes it when handed
    back (measured: the first step after a boundary ~0.1-0.2 ms slower). One statement for a
    boundary's rows does it once. `insert` ends with one `VALUES (?,…)` group.
    """
    if not rows:
        return
    head, group = insert.rsplit("VALUES", 1)
    width = len(rows[0])
    per = max(1, _MAX_VARIABLES // width)
    for i in range(0, len(rows), per):
        chunk = rows[i : i + per]
        sql = f"{head}VALUES {','.join([group.strip()] * len(chunk))}"
        conn.execute(sql, [value for row in chunk for value in row])


def _statements(rows: Sequence[Sequence[Any]]) -> int:
    """How many INSERT statements `_insert_all` runs for `rows`."""
    if not rows:
        return 0
    per = max(1, _MAX_VARIABLES // len(rows[0]))
    return -(-len(rows) // per)


def _nothing() -> None:
    """The job that starts the writer's thread."""


class CommitWriter:
    """Runs jobs on one background thread, one at a time; `wait` joins the one in flight."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._pending: Future[None] | None = None
        #: Bytes committed since the last WAL checkpoint (touched by the job thread only).
        self.unchecked_bytes = 0
        # The pool's thread is started now, by a short-lived helper: `Thread.start` waits until
        # the new thread runs, and on a busy machine (2 cores, other work) that wait took 0.2-4
        # ms of the training thread at its first commit (B2). `_thread`, not `threading`, for
        # the helper: starting a `threading.Thread` waits the same way.
        _thread.start_new_thread(self._start_thread, ())

    def _start_thread(self) -> None:
        # Closed before the helper ran: nothing to start (`submit` refuses after `shutdown`).
        with contextlib.suppress(RuntimeError):
            self._pool.submit(_nothing)

    @property
    def busy(self) -> bool:
        """Whether a job was handed over and not yet waited for."""
        return self._pending is not None

    def submit(self, job: Callable[[], None]) -> None:
        """Run `job` in the background, after waiting for (and re-raising) the one before."""
        self.wait()
        with self._lock:
            self._pending = self._pool.submit(job)

    def wait(self) -> None:
        """Wait for the job in flight, if any; re-raise its error (once)."""
        # Held while waiting: another thread that asks meanwhile waits for the same job
        # instead of using the connection under it. The job itself never takes this lock.
        with self._lock:
            pending = self._pending
            if pending is None:
                return
            try:
                pending.result()
            finally:
                self._pending = None

    def close(self) -> None:
        """Wait for the job in flight (re-raising its error), then stop the thread."""
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


class BackgroundCommits:
    """`RunDatabase`'s appends committed by a `CommitWriter` (`commit_in_background`)."""

    path: Path
    _c: sqlite3.Connection | None
    _writer: CommitWriter | None
    _staged: dict[str, bytes]
    #: `(head before, branch, rows, parsed payloads)` of the latest append (`appended_after`).
    _last_append: LastAppend | None

    if TYPE_CHECKING:  # what the host class (`RunDatabase`) provides

        def head(self) -> tuple[int, str]: ...

        def _require_writer(self) -> None: ...

        def _plan(
            self, prepared: Prepared, branch: str, head: tuple[int, str], look_up_ids: bool
        ) -> tuple[list[Row], list[AppendResult], dict[str, int]]: ...

        def _committed(
            self, branch: str, head: int, rows: list[Row], new_versions: dict[str, int]
        ) -> None: ...

        def _committed_blobs(self, keys: Sequence[str]) -> None: ...

    def commit_in_background(self) -> None:
        """Commit appends on a background thread from now on (`store.commit_writer`).

        An append returns once its rows are planned (seqs and hashes fixed); the next use of
        the store waits for the commit and raises its error. For a trainer: the commit and its
        fsync overlap the next epoch's steps (B2).
        """
        self._require_writer()
        if self._writer is None:
            self._writer = CommitWriter(f"esper-es-commit-{self.path.name}")

    @property
    def _conn(self) -> sqlite3.Connection:
        # Every use of the connection but the background commit's comes through here: it
        # waits for the commit in flight (re-raising its error), so it never reads a state
        # the file does not hold, and never shares the connection with that commit.
        if self._writer is not None and self._writer.busy:
            self._writer.wait()
        conn = self._c
        if conn is None:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        return conn

    def _settle(self) -> None:
        """Wait for the commit in flight, if any (re-raising its error)."""
        if self._writer is not None:
            self._writer.wait()

    def _append_in_background(
        self, conn: sqlite3.Connection, prepared: Prepared, branch: str
    ) -> list[AppendResult]:
        writer = self._writer
        assert writer is not None
        # Planned here, before the hand-off, with every id looked up (an acknowledgement
        # decided now: the thread cannot decide again), against the file as committed.
        head = self.head()
        rows, results, new_versions = self._plan(prepared, branch, head, True)
        staged = [(k, len(b), b) for k, b in self._staged.items()]
        self._staged.clear()
        self._last_append = (head[0], branch, rows, parsed_payloads(prepared, results))

        # One INSERT statement is a transaction of its own (the connection autocommits): as
        # atomic and as durable (WAL, synchronous=FULL) as `BEGIN IMMEDIATE … COMMIT` around
        # it, and an INSERT takes the write lock as it starts, as BEGIN IMMEDIATE does. It is
        # one call into SQLite instead of three, and each call lets go of the GIL and takes it
        # back: on this thread every retake may wait for the training thread, which then waits
        # in turn (a growing run commits at most boundaries, B2b). Anything more is wrapped.
        single = not staged and _statements(rows) <= 1

        def commit() -> None:
            try:
                with contextlib.nullcontext() if single else transaction(conn):
                    _insert_all(conn, INSERT_EVENTS, rows)
                    _insert_all(conn, INSERT_BLOB, staged)
            except sqlite3.IntegrityError as exc:
                raise ConcurrencyError(branch, None, None, f"append refused: {exc}") from None
            except sqlite3.DatabaseError as exc:
                raise sqlite_failure(self.path, exc) from None
            finally:
                if conn.in_transaction:  # a failed COMMIT can leave it open
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
            self._committed(branch, head[0], rows, new_versions)
            self._committed_blobs([b[0] for b in staged])
            # Copy the committed pages into the main file now, while training goes on, once
            # they add up to a megabyte, so that `close` has little left to copy (a run's
            # snapshots are ~1 MB an epoch at width 64, B2); small commits wait for `close`
            # (checkpointing each would copy the same index pages again and again). PASSIVE
            # never waits for readers; durability is the WAL's either way.
            writer.unchecked_bytes += sum(len(r[1]) + len(r[8]) for r in rows)
            writer.unchecked_bytes += sum(b[1] for b in staged)
            if writer.unchecked_bytes >= _CHECKPOINT_BYTES:
                writer.unchecked_bytes = 0
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

        writer.submit(commit)
        return results

    def appended_after(self, after: int, branch: str) -> list[RecordedEvent] | None:
        """The events of the latest append, from the rows it wrote (not read back), if they
        are every event after seq `after` on `branch`; None when they are not (read them).

        This connection is the file's only writer, so when the append was planned right after
        seq `after`, its rows are exactly the events after it. A trainer projects from them
        while the commit may still be in flight (`commit_in_background`).
        """
        last = self._last_append
        if last is None or last[0] != after or last[1] != branch:
            return None
        # Not schema-checked again: `encode` checked these payloads before they were rows; nor
        # parsed again where `encode` kept the very payload that parsing would give.
        return [
            decode_row(row, checked=False, parsed=parsed)
            for row, parsed in zip(last[2], last[3], strict=True)
        ]
