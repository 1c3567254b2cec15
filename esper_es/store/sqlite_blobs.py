"""Blobs of the SQLite run store: content-addressed (key = SHA-256 of the bytes), immutable.

A snapshot's blobs are staged and written in the transaction of the `Checkpointed` that names
them (`stage_blobs`), one fsync for both (B2).

A store this connection created knows every blob key its file holds (`_blob_keys`): only its
own writes put blobs there, and blobs are never deleted (a trigger refuses it). It then answers
`stored_blobs` and `has_blob` without a query: a trainer asks once per snapshot, ~0.1 ms each
at the start of a boundary (B2). A store opened on an existing file asks the file.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from esper_es.store.blob_keys import checked_blob
from esper_es.store.sqlite_files import transaction

INSERT_BLOB = "INSERT OR IGNORE INTO blobs (key, size, data) VALUES (?,?,?)"


class SqliteBlobs:
    """The blob methods of `RunDatabase` (on its connection, staged blobs and mutex)."""

    _staged: dict[str, bytes]
    _mutex: threading.RLock
    #: Every blob key the file holds, once committed, when this connection knows them all (it
    #: created the file); None: ask the file.
    _blob_keys: set[str] | None

    if TYPE_CHECKING:  # what the host class (`RunDatabase`) provides

        @property
        def _conn(self) -> sqlite3.Connection: ...  # waits for a commit in flight

        def _require_writer(self) -> None: ...

    def put_blob(self, data: bytes) -> str:
        """Store `data` under its SHA-256 (hex), once however often put; return the key."""
        self._require_writer()
        key = hashlib.sha256(data).hexdigest()
        with self._mutex, transaction(self._conn):
            self._conn.execute(INSERT_BLOB, (key, len(data), data))
            self._write_staged(self._conn)
        self._committed_blobs([key, *self._staged])
        self._staged.clear()
        return key

    def put_blobs(self, blobs: Sequence[bytes]) -> list[str]:
        """Store several blobs in one transaction (one fsync); returns their keys in order."""
        self._require_writer()
        rows = [(hashlib.sha256(b).hexdigest(), len(b), b) for b in blobs]
        if rows:
            with self._mutex, transaction(self._conn):
                self._conn.executemany(INSERT_BLOB, rows)
                self._write_staged(self._conn)
            self._committed_blobs([r[0] for r in rows] + list(self._staged))
            self._staged.clear()
        return [r[0] for r in rows]

    def stage_blobs(self, blobs: Sequence[bytes], keys: Sequence[str] | None = None) -> list[str]:
        """Store blobs with the next append (or blob write, or `close`); returns their keys.

        For a snapshot and the `Checkpointed` that names it: one transaction, one fsync, where
        two were (B2). Until then this connection reads them (`has_blob`, `get_blob`); other
        readers see them with the events that name them, never before; a crash before that
        write loses them with whatever would have named them.

        `keys`: the blobs' SHA-256 (hex) when the caller has just computed them (a snapshot
        names its blobs by them), not hashed again: a megabyte a snapshot at width 64 (B2).
        A wrong one would be caught where blobs are read (`get_blob`, `verify`).
        """
        self._require_writer()
        if keys is None:
            keys = [hashlib.sha256(b).hexdigest() for b in blobs]
        elif len(keys) != len(blobs):
            raise ValueError(f"{len(keys)} keys for {len(blobs)} blobs")
        with self._mutex:
            for key, b in zip(keys, blobs, strict=True):
                self._staged[key] = bytes(b)
        return list(keys)

    def _write_staged(self, conn: sqlite3.Connection) -> None:
        if self._staged:
            conn.executemany(INSERT_BLOB, [(k, len(b), b) for k, b in self._staged.items()])

    def _committed_blobs(self, keys: Sequence[str]) -> None:
        """Note blobs a transaction of this connection has just committed (`_blob_keys`)."""
        if self._blob_keys is not None:
            self._blob_keys.update(keys)

    def has_blob(self, key: str) -> bool:
        """Whether a blob with this key is stored (or staged on this connection)."""
        if key in self._staged:
            return True
        conn = self._conn  # first: waits for a commit in flight, whose blobs count
        if self._blob_keys is not None:
            return key in self._blob_keys
        return conn.execute("SELECT 1 FROM blobs WHERE key=?", (key,)).fetchone() is not None

    def stored_blobs(self, keys: Sequence[str]) -> set[str]:
        """Those of `keys` whose blobs are stored or staged, one query per 500 keys (or none).

        A snapshot asks this once for all its tensors instead of `has_blob` per tensor (B2).
        """
        found = {k for k in keys if k in self._staged}
        conn = self._conn  # first: waits for a commit in flight, whose blobs count
        if self._blob_keys is not None:
            return found | {k for k in keys if k in self._blob_keys}
        rest = [k for k in dict.fromkeys(keys) if k not in found]
        for i in range(0, len(rest), 500):
            chunk = rest[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(f"SELECT key FROM blobs WHERE key IN ({marks})", chunk)
            found.update(str(r[0]) for r in rows)
        return found

    def get_blob(self, key: str) -> bytes:
        """The blob stored under `key`, checked against its hash."""
        staged = self._staged.get(key)
        if staged is not None:
            return staged
        row = self._conn.execute("SELECT data FROM blobs WHERE key=?", (key,)).fetchone()
        return checked_blob(key, row)
