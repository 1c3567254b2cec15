"""`esper-es copy SRC DST`: move a run between backends (SQLite ↔ PostgreSQL), chain intact.

The source is verified first (a tampered log is never copied). The destination must not hold
a run yet. Rows are copied as stored — seqs, times, hashes — so the chain is the same chain;
branches, blobs and the side tables (signatures, kernel artifacts and outcomes) go with it.
The copy is then verified in full and its head must be the source's, or it is an error.
"""

from __future__ import annotations

import os
from typing import Any

import attrs

from esper_es.errors import EXIT_USAGE, EsperError, TamperDetected
from esper_es.store.backends import create_store, describe, is_postgres, open_store
from esper_es.store.protocol import RunStore
from esper_es.store.side_tables import SIDE_TABLES
from esper_es.store.sqlite_files import never_committed


class DestinationExists(EsperError):
    """`copy` refuses to write over a destination that already holds something (exit 2)."""

    exit_code = EXIT_USAGE

    def __init__(self, location: str) -> None:
        self.location = location
        super().__init__(
            f"{location} already exists and is not empty; copy refuses to overwrite it: "
            "choose a new destination (a new file, or a new ?schema=NAME)"
        )


@attrs.frozen
class CopyReport:
    """What `copy` moved, and the head both ends share."""

    run_id: str
    source: str
    destination: str
    events: int
    head_seq: int
    head_hash: str
    branches: tuple[str, ...]
    blobs: int
    side_rows: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return attrs.asdict(self)


def copy_run(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> CopyReport:
    """Verify `src`, copy it whole to the new run `dst`, verify `dst`; heads must agree."""
    from esper_es.store.verify import verify

    before = verify(src)
    _refuse_existing(dst)
    with open_store(src, readonly=True) as source, _create_or_refuse(dst, source.run_id) as target:
        target.import_log(source.rows(), source.branches(), source.blob_rows())
        side = _copy_side_tables(source, target)
    after = verify(dst)
    if (after.head_seq, after.head_hash) != (before.head_seq, before.head_hash):
        raise TamperDetected(
            after.head_seq,
            f"the copy's head (seq {after.head_seq}, {after.head_hash}) is not the source's "
            f"(seq {before.head_seq}, {before.head_hash})",
        )
    return CopyReport(
        run_id=before.run_id,
        source=describe(src),
        destination=describe(dst),
        events=after.events,
        head_seq=after.head_seq,
        head_hash=after.head_hash,
        branches=after.branches,
        blobs=after.blobs,
        side_rows=side,
    )


def _refuse_existing(dst: str | os.PathLike[str]) -> None:
    if is_postgres(dst):
        return  # the schema is checked under the writer's lock by `create_store`
    from pathlib import Path

    path = Path(dst)
    if path.exists() and (path.is_dir() or (path.stat().st_size > 0 and not never_committed(path))):
        raise DestinationExists(str(path))


def _create_or_refuse(dst: str | os.PathLike[str], run_id: str) -> RunStore:
    from esper_es.errors import NotARunDatabase

    try:
        return create_store(dst, run_id)
    except NotARunDatabase as exc:
        if "already" in exc.reason:
            raise DestinationExists(describe(dst)) from None
        raise


def _copy_side_tables(source: RunStore, target: RunStore) -> dict[str, int]:
    counts: dict[str, int] = {}
    for table, ddl in SIDE_TABLES.items():
        if not source.sql.has_table(table):
            continue
        rows = source.sql.query(f"SELECT * FROM {table}")
        target.sql.execute(ddl)
        if rows:
            marks = ", ".join("?" * len(rows[0]))
            target.sql.execute_many(f"INSERT INTO {table} VALUES ({marks})", rows)
        counts[table] = len(rows)
    return counts
