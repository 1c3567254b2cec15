"""A store this connection created knows its blob keys (`sqlite_blobs._blob_keys`, B2).

It answers `stored_blobs` and `has_blob` without a query, with the answer a query would
give: blobs staged, committed with an append (synchronously or in the background), put
directly; a store opened on an existing file, or one a log was imported into, asks the file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from esper_es.core import events as ev
from esper_es.core.envelope import NewEvent
from esper_es.store import RunDatabase


def _fact(n: int) -> NewEvent:
    event = ev.EpochCompleted(epoch=n, step=n, train_loss=1.0, val_loss=1.0, val_accuracy=None)
    return NewEvent(event, f"epoch-{n}")


def _key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _blob_queries(db: RunDatabase) -> list[str]:
    """Every statement the connection runs from now on that reads the blobs table."""
    seen: list[str] = []
    db.connection.set_trace_callback(
        lambda sql: (
            seen.append(sql)
            if sql.lstrip().upper().startswith("SELECT") and "blobs" in sql
            else None
        )
    )
    return seen


@pytest.mark.parametrize("background", [False, True])
def test_a_created_store_answers_from_what_it_wrote(tmp_path: Path, background: bool) -> None:
    path = tmp_path / "run.db"
    db = RunDatabase.create(path, "r")
    if background:
        db.commit_in_background()
    put = db.put_blob(b"put directly")
    db.stage_blobs([b"staged a", b"staged b"])
    db.append("run", 0, [_fact(1)])  # commits the staged blobs (maybe in the background)
    db.stage_blobs([b"staged, not committed"])
    asked = [put, _key(b"staged a"), _key(b"staged b"), _key(b"staged, not committed")]
    absent = _key(b"never written")
    queries = _blob_queries(db)
    assert db.stored_blobs([*asked, absent]) == set(asked)
    assert db.has_blob(_key(b"staged b")) and not db.has_blob(absent)
    assert queries == []
    db.close()

    again = RunDatabase.open(path)
    queries = _blob_queries(again)
    assert again.stored_blobs([*asked, absent]) == set(asked)  # close wrote the staged one
    assert queries  # an opened file is asked
    again.close()


def test_a_store_a_log_was_imported_into_asks_the_file(tmp_path: Path) -> None:
    source = RunDatabase.create(tmp_path / "a.db", "r")
    key = source.put_blob(b"from the source")
    source.append("run", 0, [_fact(1)])
    source.close()
    source = RunDatabase.open(tmp_path / "a.db", readonly=True)
    copy = RunDatabase.create(tmp_path / "b.db", "r")
    blobs = iter([(key, len(b"from the source"), b"from the source")])
    copy.import_log(source.rows(), source.branches(), blobs)
    queries = _blob_queries(copy)
    assert copy.stored_blobs([key]) == {key}
    assert queries
    copy.close()
    source.close()
