"""A PostgreSQL run's audit table: the same lines as SQLite's file trail, append-only, in
the transaction of their events, and optional for runs that predate it or opt out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from store_history import HISTORY_LEN, RUN_ID, S0, fill_history
from store_kits import PostgresKit

from esper_es.core import events as ev
from esper_es.core.envelope import NewEvent
from esper_es.store.backends import create_store, open_store
from esper_es.store.copying import copy_run
from esper_es.store.verify import verify


@pytest.fixture
def kit() -> PostgresKit:
    """Runs as schemas on the test server."""
    from pg_support import server_url

    server_url()
    return PostgresKit()


def test_the_audit_table_refuses_update_delete_and_truncate(kit: PostgresKit) -> None:
    location = kit.location()
    with kit.create(location, RUN_ID) as db:
        fill_history(db)
        assert db.missing_triggers() == []
    for sql in ("UPDATE audit SET line = '{}'", "DELETE FROM audit", "TRUNCATE audit"):
        with pytest.raises(Exception, match="refused"), kit.raw(location) as ed:
            ed.execute(sql)


def test_a_dropped_audit_trigger_fails_verify(kit: PostgresKit) -> None:
    location = kit.location()
    with kit.create(location, RUN_ID) as db:
        fill_history(db)
    kit.drop_trigger(location, "audit_append_only_delete", "audit")
    with open_store(location, readonly=True) as db:
        assert db.missing_triggers() == ["audit_append_only_delete"]


def test_a_run_without_an_audit_table_reads_writes_and_verifies(kit: PostgresKit) -> None:
    """Runs created with audit=False, or before the table existed, have none: nothing to check."""
    location = kit.location()
    with create_store(location, RUN_ID, audit=False) as db:
        fill_history(db)
        assert db.audit_lines() is None
    report = verify(location)
    assert report.audit_lines is None and report.events == HISTORY_LEN


def test_a_rolled_back_append_leaves_no_audit_line(kit: PostgresKit) -> None:
    """Lines share their events' transaction: a failed append writes neither."""
    location = kit.location()
    with kit.create(location, RUN_ID) as db:
        fill_history(db)
        with kit.raw(location) as ed:
            ed.execute(f"ALTER TABLE events ADD CONSTRAINT no_more CHECK (seq <= {HISTORY_LEN})")
        stream = f"seed:{S0}"
        late = NewEvent(ev.BlendAdjusted(seed=S0, step=99, alpha=1.0), "e-late")
        with pytest.raises(Exception, match="no_more"):
            db.append(stream, db.stream_version(stream), [late])
        lines = db.audit_lines()
        assert lines is not None and len(list(lines)) == HISTORY_LEN


def test_copy_from_sqlite_writes_a_line_per_imported_event(
    kit: PostgresKit, tmp_path: Path
) -> None:
    src = tmp_path / "run.db"
    with create_store(src, RUN_ID) as db:
        fill_history(db)
    dst = kit.location()
    copy_run(str(src), dst)
    with open_store(dst, readonly=True) as db:
        lines = db.audit_lines()
        assert lines is not None
        seqs = [json.loads(line)["seq"] for line in lines]
    assert seqs == list(range(1, HISTORY_LEN + 1))
    assert verify(dst).audit_lines == HISTORY_LEN
