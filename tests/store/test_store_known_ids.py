"""A store this connection created knows its event ids (`store.known_ids`, B2).

A background commit looks every id of its events up before the hand-off; a created store
answers that from the ids it committed, asking the file only for ids it may hold, and still
tells a retried append (acknowledged) from a conflicting one. An opened store, one a log was
imported into, or one past `known_ids.LIMIT` ids, asks the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from esper_es.core import events as ev
from esper_es.core.envelope import NewEvent
from esper_es.errors import ConcurrencyError
from esper_es.store import RunDatabase, known_ids


def _epoch(n: int, event_id: str | None = None) -> NewEvent:
    event = ev.EpochCompleted(epoch=n, step=n, train_loss=1.0, val_loss=1.0, val_accuracy=None)
    return NewEvent(event, event_id or f"epoch-{n}")


def _id_queries(db: RunDatabase) -> list[str]:
    """Every statement the connection runs from now on that looks event ids up."""
    seen: list[str] = []
    db.connection.set_trace_callback(
        lambda sql: seen.append(sql) if "WHERE event_id IN" in sql else None
    )
    return seen


def test_a_created_store_looks_up_only_ids_it_may_hold(tmp_path: Path) -> None:
    db = RunDatabase.create(tmp_path / "run.db", "r")
    db.commit_in_background()
    queries = _id_queries(db)
    db.append("run", 0, [_epoch(1)])
    db.append("run", 1, [_epoch(2), _epoch(3)])
    assert queries == []  # new ids: nothing asked
    # A retry of a stored event is acknowledged (asked, found), a reused id refused.
    again = db.append("run", 1, [_epoch(2), _epoch(3)])
    assert again.acknowledged and again.seqs == (2, 3)
    assert len(queries) == 1
    with pytest.raises(ConcurrencyError):
        db.append("run", 3, [_epoch(9, event_id="epoch-1")])
    db.append("run", 3, [_epoch(4)])
    db.close()
    with RunDatabase.open(tmp_path / "run.db", readonly=True) as back:
        assert [r.event_id for r in back.read()] == [f"epoch-{n}" for n in range(1, 5)]


def test_a_refused_append_adds_no_known_id(tmp_path: Path) -> None:
    db = RunDatabase.create(tmp_path / "run.db", "r")
    db.commit_in_background()
    db.append("run", 0, [_epoch(1)])
    with pytest.raises(ConcurrencyError):
        db.append("run", 0, [_epoch(2)])  # stale version: nothing written
    queries = _id_queries(db)
    assert not db.append("run", 1, [_epoch(2)]).acknowledged
    assert queries == []
    db.close()


def test_opened_imported_and_long_logs_ask_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = RunDatabase.create(tmp_path / "a.db", "r")
    db.append("run", 0, [_epoch(1)])
    db.close()
    opened = RunDatabase.open(tmp_path / "a.db")
    opened.commit_in_background()
    queries = _id_queries(opened)
    opened.append("run", 1, [_epoch(2)])
    assert queries
    opened.close()

    source = RunDatabase.open(tmp_path / "a.db", readonly=True)
    copy = RunDatabase.create(tmp_path / "b.db", "r")
    copy.import_log(source.rows(), source.branches(), iter([]))
    copy.commit_in_background()
    queries = _id_queries(copy)
    assert copy.append("run", 1, [_epoch(2)]).acknowledged  # imported: found by asking
    assert queries
    copy.close()
    source.close()

    monkeypatch.setattr(known_ids, "LIMIT", 2)
    long = RunDatabase.create(tmp_path / "c.db", "r")
    long.commit_in_background()
    long.append("run", 0, [_epoch(1), _epoch(2), _epoch(3)])
    queries = _id_queries(long)
    long.append("run", 3, [_epoch(4)])
    assert queries
    long.close()
