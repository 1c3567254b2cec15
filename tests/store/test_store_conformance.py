"""The store protocol's conformance suite (SPEC §3, §11): every test runs unchanged against
SQLite and PostgreSQL, through `RunStore` only (plus `store_kits` to edit behind its back)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_history import HISTORY_LEN, RUN_ID, S0, S1, SEQ, fill_history, germinated
from store_kits import Kit, PostgresKit, SqliteKit

from esper_es.core import events as ev
from esper_es.core.envelope import NewEvent
from esper_es.errors import (
    ConcurrencyError,
    DatabaseLocked,
    NotARunDatabase,
    SchemaViolation,
    TamperDetected,
)
from esper_es.store import verify
from esper_es.store.chain import GENESIS, row_hash
from esper_es.store.encoding import COLUMNS
from esper_es.store.protocol import RunStore


@pytest.fixture(params=["sqlite", "postgresql"])
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Kit:
    """One backend: SQLite files, or schemas on the test PostgreSQL server."""
    if request.param == "sqlite":
        return SqliteKit(tmp_path)
    from pg_support import server_url

    server_url()  # skips (or, in CI, fails) here when there is no server
    return PostgresKit()


@pytest.fixture
def store(kit: Kit) -> Iterator[RunStore]:
    """A fresh, empty run open for writing."""
    db = kit.create(kit.location(), RUN_ID)
    yield db
    db.close()


@pytest.fixture
def history(kit: Kit) -> str:
    """A closed run holding the SEQ history and one blob; its location."""
    location = kit.location()
    with kit.create(location, RUN_ID) as db:
        fill_history(db)
    return location


def blend(seed: str, step: int, alpha: float, eid: str) -> NewEvent:
    """A BlendAdjusted of `seed` with id `eid`."""
    return NewEvent(ev.BlendAdjusted(seed=seed, step=step, alpha=alpha), eid)


def started(eid: str = "e-run") -> NewEvent:
    """The run's RunStarted."""
    return NewEvent(ev.RunStarted(run_id=RUN_ID, master_seed=1, config={}), eid)


def raises_at(location: str, seq: int | None) -> TamperDetected:
    """Verify `location`, expecting TamperDetected at `seq`."""
    with pytest.raises(TamperDetected) as info:
        verify(location)
    assert info.value.seq == seq, info.value
    return info.value


# --- appending and reading ------------------------------------------------------------


def test_append_and_read_back(store: RunStore) -> None:
    assert store.head() == (0, GENESIS)
    r = store.append("run", 0, [started()])
    assert (r.seqs, r.version, r.acknowledged) == ((1,), 1, False)
    r = store.append(f"seed:{S0}", 0, [NewEvent(germinated(S0), "g0"), blend(S0, 2, 0.5, "b0")])
    assert (r.seqs, r.version) == ((2, 3), 2)
    seq, head_hash = store.head()
    assert seq == 3 and len(head_hash) == 64
    assert store.stream_version(f"seed:{S0}") == 2
    assert store.stream_version("nothing") == 0
    events = list(store.read())
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[0].prev_hash == GENESIS and events[1].prev_hash == events[0].hash
    assert [e.type for e in store.read(stream=f"seed:{S0}")] == ["SeedGerminated", "BlendAdjusted"]
    assert [e.seq for e in store.read(types=["BlendAdjusted"])] == [3]
    assert [e.seq for e in store.read(from_seq=2, to_seq=2)] == [2]
    assert [e.seq for e in store.read(branch=None)] == [1, 2, 3]
    assert store.event_at(2) is not None and store.event_at(9) is None
    assert store.seq_of_hash(head_hash) == 3 and store.seq_of_hash("0" * 64) is None
    assert [r[0] for r in store.rows(2)] == [2, 3]


def test_appended_events_kept_by_the_store_are_those_a_read_returns(store: RunStore) -> None:
    # What a trainer projects from (`appended_after`) must be what reading back would give,
    # on a backend that keeps its latest append (SQLite, committing in the background) and on
    # one that does not (None: read).
    store.commit_in_background()
    store.append("run", 0, [started()])
    store.append(f"seed:{S0}", 0, [NewEvent(germinated(S0), "g0"), blend(S0, 2, 0.5, "b0")])
    kept = store.appended_after(1, "main")
    read = list(store.read(from_seq=2))
    assert [e.seq for e in read] == [2, 3]
    if kept is not None:
        assert [(e.seq, e.hash, e.event) for e in kept] == [(e.seq, e.hash, e.event) for e in read]
    # Not the latest append's start, or another branch: the store does not guess.
    assert store.appended_after(0, "main") is None
    assert store.appended_after(1, "other") is None


def test_a_batch_across_streams_is_all_or_nothing(store: RunStore) -> None:
    store.append("run", 0, [started()])
    with pytest.raises(ConcurrencyError):
        store.append_batch(
            [(f"seed:{S0}", 0, [NewEvent(germinated(S0), "g0")]), ("run", 0, [started("e-2")])]
        )
    assert store.head()[0] == 1
    assert store.stream_version(f"seed:{S0}") == 0
    results = store.append_batch(
        [(f"seed:{S0}", 0, [NewEvent(germinated(S0), "g0")]), ("run", 1, [started("e-2")])]
    )
    assert [r.seqs for r in results] == [(2,), (3,)]


def test_a_stale_expected_version_is_a_conflict_and_appends_nothing(store: RunStore) -> None:
    store.append(f"seed:{S0}", 0, [NewEvent(germinated(S0), "g0")])
    head = store.head()
    with pytest.raises(ConcurrencyError) as info:
        store.append(f"seed:{S0}", 0, [blend(S0, 2, 0.5, "b0")])
    assert info.value.exit_code == 5
    assert store.head() == head


def test_a_retried_append_is_acknowledged_not_duplicated(store: RunStore) -> None:
    batch = [NewEvent(germinated(S0), "g0"), blend(S0, 2, 0.5, "b0")]
    first = store.append(f"seed:{S0}", 0, batch)
    again = store.append(f"seed:{S0}", 0, batch)
    assert again.acknowledged and again.seqs == first.seqs
    assert store.head()[0] == 2
    with pytest.raises(ConcurrencyError, match="already used by a different event"):
        store.append(f"seed:{S0}", 2, [blend(S0, 3, 0.9, "b0")])


def test_an_event_that_breaks_its_schema_is_refused(store: RunStore) -> None:
    with pytest.raises(SchemaViolation):
        store.append(f"seed:{S0}", 0, [blend(S0, 2, float("nan"), "bad")])
    assert store.head()[0] == 0


# --- branches ------------------------------------------------------------------------


def test_a_branch_sees_its_parent_up_to_the_fork_and_its_own_after(store: RunStore) -> None:
    store.append("run", 0, [started()])
    store.append(f"seed:{S0}", 0, [NewEvent(germinated(S0), "g0"), blend(S0, 2, 0.3, "b0")])
    store.append(f"seed:{S0}", 2, [blend(S0, 3, 0.6, "b1")])
    b = store.open_branch("b1", "main", 3)
    assert (b.parent, b.fork_seq) == ("main", 3)
    assert [x.name for x in store.branches()] == ["main", "b1"]
    assert store.lineage("b1") == [("b1", None), ("main", 3)]
    assert store.stream_version(f"seed:{S0}", "b1") == 2
    r = store.append(f"seed:{S0}", 2, [blend(S0, 3, 0.7, "c1")], branch="b1")
    assert r.seqs == (5,) and r.version == 3
    assert [e.seq for e in store.read(branch="b1")] == [1, 2, 3, 5]
    assert [e.seq for e in store.read(branch="main")] == [1, 2, 3, 4]
    assert store.head_seq("b1") == 5 and store.head_seq("main") == 4
    with pytest.raises(ValueError):
        store.open_branch("b1", "main", 1)
    with pytest.raises(KeyError):
        store.branch("nope")


# --- blobs ---------------------------------------------------------------------------


def test_blobs_are_content_addressed_and_checked(kit: Kit, store: RunStore) -> None:
    key = store.put_blob(b"weights \x00\xff")
    assert store.put_blob(b"weights \x00\xff") == key
    assert store.put_blobs([b"a", b"weights \x00\xff"]) == [store.put_blob(b"a"), key]
    assert store.has_blob(key) and not store.has_blob("0" * 64)
    assert store.get_blob(key) == b"weights \x00\xff"
    assert sorted(k for k, _, _ in store.blob_rows()) == sorted({key, store.put_blob(b"a")})
    with pytest.raises(KeyError):
        store.get_blob("0" * 64)


def test_stored_blobs_answers_for_many_keys_at_once(kit: Kit, store: RunStore) -> None:
    stored = store.put_blobs([str(i).encode() for i in range(600)])  # past one query's 500 keys
    staged = store.stage_blobs([b"staged"])[0]
    absent = [f"{i:064x}" for i in range(3)]
    keys = [*absent, *stored, staged, stored[0]]
    assert store.stored_blobs(keys) == {*stored, staged}
    assert store.stored_blobs([]) == set() and store.stored_blobs(absent) == set()


# --- the single writer -----------------------------------------------------------------


def test_one_writer_at_a_time_readers_any_time(kit: Kit) -> None:
    location = kit.location()
    writer = kit.create(location, RUN_ID)
    writer.append("run", 0, [started()])
    with pytest.raises(DatabaseLocked) as info:
        kit.open(location)
    assert info.value.exit_code == 5
    with kit.open(location, readonly=True) as reader:
        assert reader.head()[0] == 1
        with pytest.raises(PermissionError):
            reader.append("run", 1, [started("e-2")])
    writer.close()
    with kit.open(location) as again:
        assert again.append("run", 1, [started("e-2")]).seqs == (2,)


def test_an_existing_run_is_never_overwritten(kit: Kit, history: str) -> None:
    with pytest.raises(NotARunDatabase):
        kit.create(history, "another")
    assert verify(history).events == HISTORY_LEN


# --- verify and the tamper classes -----------------------------------------------------


def test_an_untouched_history_verifies(history: str) -> None:
    report = verify(history)
    assert (report.events, report.run_id, report.blobs) == (HISTORY_LEN, RUN_ID, 1)


def test_the_audit_trail_names_every_event_in_order(kit: Kit, history: str) -> None:
    """One canonical line per event (a file beside SQLite, a table in PostgreSQL)."""
    assert verify(history).audit_lines == HISTORY_LEN
    with kit.open(history, readonly=True) as db:
        lines = db.audit_lines()
        assert lines is not None
        logged = [json.loads(line) for line in lines]
        rows = list(db.rows())
    assert [(r["seq"], r["hash"], r["type"], r["run_id"]) for r in logged] == [
        (row[0], row[-1], row[6], RUN_ID) for row in rows
    ]


def test_a_cut_tail_is_caught_by_the_audit_trail(kit: Kit, history: str) -> None:
    """A chain cut at its end is still a valid chain: only the audit trail can tell."""
    with kit.edit(history) as ed:
        ed.execute("DELETE FROM events WHERE seq=?", (HISTORY_LEN,))
    assert "removed from the end" in raises_at(history, HISTORY_LEN).reason


def test_the_store_refuses_edits_itself(kit: Kit, history: str) -> None:
    """The append-only triggers are there and refuse UPDATE and DELETE."""
    with kit.open(history) as db:
        assert db.missing_triggers() == []
    for sql in ("UPDATE events SET payload = '{}' WHERE seq = 1", "DELETE FROM blobs"):
        with pytest.raises(Exception, match="refused"), kit.raw(history) as ed:
            ed.execute(sql)


def _rechain(ed: Any, rows: list[list[Any]]) -> None:
    """Re-insert `rows` (in COLUMNS order) with every hash recomputed, as the recipe allows."""
    prev = rows[0][12]
    ed.execute("DELETE FROM events WHERE seq >= ?", (rows[0][0],))
    for r in rows:
        h = row_hash(prev, *r[:12])
        ed.execute(
            f"INSERT INTO events ({COLUMNS}) VALUES ({', '.join('?' * 14)})", (*r[:12], prev, h)
        )
        prev = h


def _rows_from(ed: Any, seq: int) -> list[list[Any]]:
    return [
        list(r)
        for r in ed.execute(f"SELECT {COLUMNS} FROM events WHERE seq >= ? ORDER BY seq", (seq,))
    ]


def test_an_altered_payload_is_caught_at_its_seq(kit: Kit, history: str) -> None:
    seq = SEQ["s0_alpha_half"]
    with kit.edit(history) as ed:
        (payload,) = ed.execute("SELECT payload FROM events WHERE seq=?", (seq,))[0]
        ed.execute("UPDATE events SET payload=? WHERE seq=?", (payload.replace("0.5", "0.6"), seq))
    assert "hash" in raises_at(history, seq).reason


def test_a_rehashed_row_breaks_the_chain_at_the_next_seq(kit: Kit, history: str) -> None:
    seq = SEQ["s0_alpha_half"]
    with kit.edit(history) as ed:
        row = _rows_from(ed, seq)[0]
        row[8] = row[8].replace("0.5", "0.6")
        ed.execute(
            "UPDATE events SET payload=?, hash=? WHERE seq=?",
            (row[8], row_hash(row[12], *row[:12]), seq),
        )
    assert "chain" in raises_at(history, seq + 1).reason


def test_a_deleted_row_is_caught_at_its_seq(kit: Kit, history: str) -> None:
    seq = SEQ["s0_grafting"]
    with kit.edit(history) as ed:
        ed.execute("DELETE FROM events WHERE seq=?", (seq,))
    assert "missing" in raises_at(history, seq).reason


def test_swapped_rows_are_caught_at_the_lower_seq(kit: Kit, history: str) -> None:
    low, high = SEQ["s0_training"], SEQ["s1_germinated"]
    with kit.edit(history) as ed:
        rows = {r[0]: r for r in _rows_from(ed, low) if r[0] in (low, high)}
        ed.execute("DELETE FROM events WHERE seq IN (?, ?)", (low, high))
        for seq, other in ((low, high), (high, low)):
            ed.execute(
                f"INSERT INTO events ({COLUMNS}) VALUES ({', '.join('?' * 14)})",
                (seq, *rows[other][1:]),
            )
    raises_at(history, low)


def test_an_impossible_history_is_caught_even_rechained(kit: Kit, history: str) -> None:
    target = SEQ["s0_training"]
    with kit.edit(history) as ed:
        rows = _rows_from(ed, target)
        rows[0][6] = "SeedFossilized"
        rows[0][8] = '{"contribution":1.0,"instability":0.0,"seed":"layer1/0","step":2}'
        _rechain(ed, rows)
    kit.forget_audit(history)
    assert "impossible history" in raises_at(history, target).reason


def test_a_non_canonical_payload_is_caught_even_rechained(kit: Kit, history: str) -> None:
    seq = HISTORY_LEN
    with kit.edit(history) as ed:
        rows = _rows_from(ed, seq)
        rows[0][8] = rows[0][8].replace(",", ", ")
        _rechain(ed, rows)
    kit.forget_audit(history)
    assert "canonical" in raises_at(history, seq).reason


def test_another_runs_row_is_caught_even_rechained(kit: Kit, history: str) -> None:
    seq = SEQ["s1_training"]
    with kit.edit(history) as ed:
        rows = _rows_from(ed, seq)
        rows[0][2] = "someone-else"
        _rechain(ed, rows)
    kit.forget_audit(history)
    assert "run_id" in raises_at(history, seq).reason


def test_a_stream_version_jump_is_caught_even_rechained(kit: Kit, history: str) -> None:
    seq = SEQ["s1_culled"]
    with kit.edit(history) as ed:
        rows = _rows_from(ed, seq)
        rows[0][5] = 7
        _rechain(ed, rows)
    kit.forget_audit(history)
    assert "jumps" in raises_at(history, seq).reason


def test_disabled_or_dropped_triggers_fail(kit: Kit, history: str) -> None:
    with kit.edit(history, restore_triggers=False):
        pass
    assert "triggers" in raises_at(history, None).reason
    other = kit.location()
    with kit.create(other, RUN_ID) as db:
        fill_history(db)
    kit.drop_trigger(other, "blobs_immutable_delete", "blobs")
    assert "blobs_immutable_delete" in raises_at(other, None).reason


def test_an_altered_blob_is_caught(kit: Kit, history: str) -> None:
    with kit.edit(history) as ed:
        (key,) = ed.execute("SELECT key FROM blobs")[0]
        ed.execute("UPDATE blobs SET data=? WHERE key=?", (b"forged", key))
    assert "blob" in raises_at(history, None).reason
    with kit.open(history, readonly=True) as db, pytest.raises(TamperDetected):
        db.get_blob(key)


def test_a_moved_fork_point_is_caught(kit: Kit) -> None:
    location = kit.location()
    with kit.create(location, RUN_ID) as db:
        fill_history(db)
        db.open_branch("b1", "main", 5)
        db.append(
            "run",
            1,
            [
                NewEvent(
                    ev.RunRolledBack(branch="b1", from_branch="main", to_seq=5, step=30, epoch=0),
                    "rb",
                )
            ],
            branch="b1",
        )
    verify(location)
    with kit.edit(location) as ed:
        ed.execute("UPDATE branches SET fork_seq=? WHERE name=?", (6, "b1"))
    assert "branch" in raises_at(location, HISTORY_LEN + 1).reason


# --- the same chain on both ----------------------------------------------------------


def test_both_backends_chain_the_same_events_to_the_same_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pg_support import server_url

    server_url()
    import esper_es.store.appending as appending

    # Both backends stamp `recorded_at` through `appending.plan_for`: one clock to fix.
    monkeypatch.setattr(appending, "now_iso", lambda: "2026-01-01T00:00:00.000000+00:00")
    heads, rows = [], []
    for k in (SqliteKit(tmp_path), PostgresKit()):
        location = k.location()
        with k.create(location, RUN_ID) as db:
            fill_history(db, padding=30)
            heads.append(db.head())
            rows.append(list(db.rows()))
    assert heads[0] == heads[1] and heads[0][0] == HISTORY_LEN + 30
    assert rows[0] == rows[1]
    assert S1  # the history covers both seeds
