"""Appending to the run database (SPEC §3): PRAGMAs, expected versions, idempotency, atomicity."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from esper_es.core import events as ev
from esper_es.core.canonical import canonical_json
from esper_es.core.envelope import NewEvent
from esper_es.errors import ConcurrencyError, SchemaViolation
from esper_es.store import RunDatabase, verify
from esper_es.store.database import audit_path

S0, S1 = "layer1/0", "layer1/1"


def germinated(seed: str, step: int = 1, **kw: object) -> ev.SeedGerminated:
    """A valid SeedGerminated for `seed` of layer1."""
    args: dict[str, object] = {
        "seed": seed, "step": step, "layer": "layer1", "blueprint": "conv3x3",
        "kernel_id": f"k-{seed}", "init_seed": 7, "blend_target": 1.0,
    }  # fmt: skip
    args.update(kw)
    return ev.SeedGerminated(**args)  # type: ignore[arg-type]


def count(db: RunDatabase) -> int:
    """Rows in the events table, read raw."""
    n: int = db.connection.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    return n


def snapshot(db: RunDatabase) -> tuple[object, ...]:
    """Head, row count and every stream version: what a refused append must leave unchanged."""
    versions = tuple(db.stream_version(f"seed:{s}") for s in (S0, S1))
    return (db.head(), count(db), versions, db.stream_version("run"))


# --- PRAGMAs --------------------------------------------------------------------------


def test_pragmas_are_set(db: RunDatabase) -> None:
    conn = db.connection
    assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0


def test_pragmas_persist_after_reopen(db_path: Path) -> None:
    RunDatabase.create(db_path, "r").close()
    with RunDatabase.open(db_path) as db:
        assert db.connection.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        assert db.connection.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert db.connection.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    with RunDatabase.open(db_path, readonly=True) as ro:
        assert ro.connection.execute("PRAGMA busy_timeout").fetchone()[0] > 0


# --- basic append and read ------------------------------------------------------------


def test_append_assigns_gap_free_seqs_and_versions(db: RunDatabase) -> None:
    started = ev.SeedTrainingStarted(seed=S0, step=2)
    r0 = db.append(f"seed:{S0}", 0, [NewEvent(germinated(S0), "a"), NewEvent(started, "b")])
    r1 = db.append(f"seed:{S1}", 0, [NewEvent(germinated(S1), "c")])
    r2 = db.append(f"seed:{S0}", 2, [NewEvent(ev.SeedCulled(seed=S0, step=3), "d")])
    assert (r0.seqs, r0.version) == ((1, 2), 2)
    assert (r1.seqs, r1.version) == ((3,), 1)
    assert (r2.seqs, r2.version) == ((4,), 3)
    assert not r0.acknowledged
    recs = list(db.read())
    assert [r.seq for r in recs] == [1, 2, 3, 4]
    assert [(r.stream, r.stream_version) for r in recs] == [
        (f"seed:{S0}", 1), (f"seed:{S0}", 2), (f"seed:{S1}", 1), (f"seed:{S0}", 3),
    ]  # fmt: skip
    assert recs[0].event == germinated(S0)
    assert recs[0].run_id == db.run_id and recs[0].branch == "main"
    assert [r.seq for r in db.read(stream=f"seed:{S0}")] == [1, 2, 4]
    assert [r.seq for r in db.read(types=["SeedGerminated"])] == [1, 3]
    assert [r.seq for r in db.read(from_seq=2, to_seq=3)] == [2, 3]
    assert db.head()[0] == 4


def test_stored_payload_is_canonical_json(db: RunDatabase) -> None:
    event = ev.RunStarted(run_id="r", master_seed=1, config={"zeta": "ü", "alpha": [1, 2]})
    db.append("run", 0, [NewEvent(event, "x")])
    (payload,) = db.connection.execute("SELECT payload FROM events").fetchone()
    assert payload == canonical_json(ev.to_payload(event))
    assert (
        payload.index('"alpha"') < payload.index('"zeta"') and "ü" in payload and " " not in payload
    )


@pytest.mark.parametrize(
    "event",
    [
        ev.SeedCulled(seed=S0, step=2**53 + 1, reason='é "q" \\ \n \x00 \u2028 🙂'),
        ev.BlendAdjusted(seed=S0, step=0, alpha=0.1 + 0.2),
        ev.BlendAdjusted(seed=S0, step=1, alpha=1e-300),
        ev.BlendAdjusted(seed=S0, step=1, alpha=1),  # an int where a number is allowed
        ev.SeedFossilized(seed=S0, step=3, contribution=-1.5e10, instability=0.0),
        ev.CommandRefused(command_id="c", command="X", seed=S0, trigger="t", stage="S",
                          reason="ü" * 50, step=4),
        ev.SeedLayerRegistered(layer="l1", shape_kind="image", channels=3, num_seeds=2,
                               blueprints=["b", "a"]),
    ],
    ids=lambda e: type(e).__name__,
)  # fmt: skip
def test_every_stored_payload_is_canonical_json(db: RunDatabase, event: ev.Event) -> None:
    db.append(event.stream(), 0, [NewEvent(event, "x")])
    (payload,) = db.connection.execute("SELECT payload FROM events").fetchone()
    assert payload == canonical_json(ev.to_payload(event))
    (rec,) = db.read(branch=None)
    assert rec.event == event


def test_event_on_the_wrong_stream_is_refused(db: RunDatabase) -> None:
    with pytest.raises(ValueError, match="belongs to stream"):
        db.append(f"seed:{S1}", 0, [NewEvent(germinated(S0), "a")])
    assert count(db) == 0


# --- expected versions ----------------------------------------------------------------


def test_wrong_expected_version_raises_and_appends_nothing(db: RunDatabase) -> None:
    db.append(f"seed:{S0}", 0, [NewEvent(germinated(S0), "a")])
    before = snapshot(db)
    for wrong in (0, 2, 7):
        with pytest.raises(ConcurrencyError) as info:
            db.append(f"seed:{S0}", wrong, [NewEvent(ev.SeedTrainingStarted(seed=S0, step=2), "b")])
        assert info.value.exit_code == 5
        assert (info.value.expected, info.value.actual) == (wrong, 1)
        assert snapshot(db) == before
    # The right version still works afterwards: nothing was half-applied.
    assert db.append(
        f"seed:{S0}", 1, [NewEvent(ev.SeedTrainingStarted(seed=S0, step=2), "b")]
    ).seqs == (2,)


def test_a_second_handle_sees_the_stream_move(db_path: Path) -> None:
    """A stale cached version cannot hide another append: the cache follows every commit."""
    db = RunDatabase.create(db_path, "r")
    db.append(f"seed:{S0}", 0, [NewEvent(germinated(S0), "a")])
    assert db.stream_version(f"seed:{S0}") == 1
    db.close()
    with RunDatabase.open(db_path) as again:
        assert again.stream_version(f"seed:{S0}") == 1
        with pytest.raises(ConcurrencyError):
            again.append(f"seed:{S0}", 0, [NewEvent(ev.SeedCulled(seed=S0, step=1), "z")])


# --- idempotency ----------------------------------------------------------------------


def test_appending_the_same_event_again_is_acknowledged(db: RunDatabase) -> None:
    batch = [
        NewEvent(germinated(S0), "a", "cmd"),
        NewEvent(ev.SeedTrainingStarted(seed=S0, step=2), "b", "cmd"),
    ]
    first = db.append(f"seed:{S0}", 0, batch)
    db.append(f"seed:{S1}", 0, [NewEvent(germinated(S1), "c")])
    before = snapshot(db)
    lines = audit_path(db.path).read_text().count("\n")
    # Retried with the version it was first decided at (now stale): acknowledged, not refused.
    again = db.append(f"seed:{S0}", 0, batch)
    assert again.acknowledged
    assert again.seqs == first.seqs == (1, 2)
    assert snapshot(db) == before
    assert audit_path(db.path).read_text().count("\n") == lines
    assert (
        db.connection.execute("SELECT COUNT(*) FROM events WHERE event_id='a'").fetchone()[0] == 1
    )


def test_reusing_an_event_id_with_different_content_is_refused(db: RunDatabase) -> None:
    db.append(f"seed:{S0}", 0, [NewEvent(germinated(S0), "a")])
    before = snapshot(db)
    with pytest.raises(ConcurrencyError, match="already used"):
        db.append(f"seed:{S0}", 1, [NewEvent(germinated(S0, step=9), "a")])
    with pytest.raises(ConcurrencyError, match="already used"):
        db.append(f"seed:{S1}", 0, [NewEvent(germinated(S1), "a")])
    assert snapshot(db) == before


def test_a_batch_mixing_stored_and_new_events_is_refused(db: RunDatabase) -> None:
    db.append(f"seed:{S0}", 0, [NewEvent(germinated(S0), "a")])
    before = snapshot(db)
    with pytest.raises(ConcurrencyError, match="mixes"):
        db.append(
            f"seed:{S0}",
            0,
            [NewEvent(germinated(S0), "a"), NewEvent(ev.SeedTrainingStarted(seed=S0, step=2), "b")],
        )
    assert snapshot(db) == before


# --- atomicity ------------------------------------------------------------------------


def test_a_batch_with_one_invalid_event_appends_nothing(db: RunDatabase) -> None:
    db.append(f"seed:{S1}", 0, [NewEvent(germinated(S1), "z")])
    before = snapshot(db)
    batch = [
        NewEvent(germinated(S0), "a"),
        NewEvent(ev.SeedTrainingStarted(seed=S0, step=2), "b"),
        NewEvent(ev.BlendAdjusted(seed=S0, step=3, alpha=2.0), "c"),
    ]
    with pytest.raises(SchemaViolation) as info:
        db.append(f"seed:{S0}", 0, batch)
    assert info.value.event_type == "BlendAdjusted" and "alpha" in str(info.value)
    assert snapshot(db) == before
    assert (
        db.connection.execute(
            "SELECT COUNT(*) FROM events WHERE event_id IN ('a','b','c')"
        ).fetchone()[0]
        == 0
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_numbers_are_refused_on_append(db: RunDatabase, bad: float) -> None:
    with pytest.raises(SchemaViolation):
        db.append(f"seed:{S0}", 0, [NewEvent(germinated(S0, blend_target=bad), "a")])
    assert count(db) == 0


def test_append_batch_across_streams_is_all_or_nothing(db: RunDatabase) -> None:
    db.append(f"seed:{S1}", 0, [NewEvent(germinated(S1), "z")])
    before = snapshot(db)
    batches = [
        (f"seed:{S0}", 0, [NewEvent(germinated(S0), "a")]),
        ("run", 0, [NewEvent(ev.RunStarted(run_id="r", master_seed=1, config={}), "b")]),
        (f"seed:{S1}", 0, [NewEvent(ev.SeedTrainingStarted(seed=S1, step=2), "c")]),  # is at 1
    ]
    with pytest.raises(ConcurrencyError) as info:
        db.append_batch(batches)
    assert info.value.stream == f"seed:{S1}"
    assert snapshot(db) == before
    # Retried with the right version the whole batch goes in, versions continuing correctly.
    batches[2] = (f"seed:{S1}", 1, batches[2][2])
    results = db.append_batch(batches)
    assert [r.seqs for r in results] == [(2,), (3,), (4,)]
    assert [r.version for r in results] == [1, 1, 2]
    assert db.stream_version(f"seed:{S1}") == 2


def test_append_batch_to_one_stream_twice_chains_versions(db: RunDatabase) -> None:
    results = db.append_batch(
        [
            (f"seed:{S0}", 0, [NewEvent(germinated(S0), "a")]),
            (f"seed:{S0}", 1, [NewEvent(ev.SeedTrainingStarted(seed=S0, step=2), "b")]),
        ]
    )
    assert [r.version for r in results] == [1, 2]
    assert [r.stream_version for r in db.read()] == [1, 2]


# --- append-only triggers -------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE events SET payload = '{}' WHERE seq = 1",
        "UPDATE events SET recorded_at = 'x'",
        "DELETE FROM events WHERE seq = 1",
        "DELETE FROM events",
    ],
)
def test_update_and_delete_on_events_are_refused(db: RunDatabase, sql: str) -> None:
    db.append(f"seed:{S0}", 0, [NewEvent(germinated(S0), "a")])
    row = db.connection.execute("SELECT * FROM events").fetchall()
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.connection.execute(sql)
    assert db.connection.execute("SELECT * FROM events").fetchall() == row


def test_update_and_delete_are_refused_from_a_separate_connection(history: object) -> None:
    path = history.path  # type: ignore[attr-defined]
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("UPDATE events SET payload = '{}' WHERE seq = 3")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("DELETE FROM events WHERE seq = 12")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("UPDATE blobs SET data = x'00'")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("DELETE FROM blobs")
        conn.rollback()
    finally:
        conn.close()
    verify(path)


# --- the audit trail ------------------------------------------------------------------


def test_audit_trail_has_one_line_per_event(db: RunDatabase) -> None:
    started = ev.SeedTrainingStarted(seed=S0, step=2)
    db.append(
        f"seed:{S0}",
        0,
        [NewEvent(germinated(S0), "a", "cmd-1", "dec-1"), NewEvent(started, "b", "cmd-2")],
    )
    db.append("run", 0, [NewEvent(ev.RunStarted(run_id="r", master_seed=1, config={}), "c")])
    with pytest.raises(ConcurrencyError):
        db.append("run", 0, [NewEvent(ev.RunStarted(run_id="r", master_seed=2, config={}), "d")])
    lines = audit_path(db.path).read_text("utf-8").splitlines()
    assert len(lines) == 3
    recs = [json.loads(line) for line in lines]
    rows = {r.seq: r for r in db.read()}
    for rec in recs:
        row = rows[rec["seq"]]
        assert rec["run_id"] == db.run_id
        assert rec["stream"] == row.stream
        assert rec["type"] == row.type
        assert rec["causation_id"] == row.causation_id
        assert rec["hash"] == row.hash
        assert rec["event_id"] == row.event_id
    assert [r["seq"] for r in recs] == [1, 2, 3]
    assert [r["causation_id"] for r in recs] == ["cmd-1", "cmd-2", None]
    assert recs[0]["correlation_id"] == "dec-1"


def test_no_audit_trail_when_disabled(db_path: Path) -> None:
    with RunDatabase.create(db_path, "r", audit=False) as db:
        db.append(f"seed:{S0}", 0, [NewEvent(germinated(S0), "a")])
    assert not audit_path(db_path).exists()
    assert verify(db_path).audit_lines is None


def test_read_only_handle_cannot_append(history: object) -> None:
    path = history.path  # type: ignore[attr-defined]
    with RunDatabase.open(path, readonly=True) as ro:
        with pytest.raises(PermissionError):
            ro.append(f"seed:{S0}", 8, [NewEvent(ev.SeedCulled(seed=S0, step=99), "new")])
        with pytest.raises(PermissionError):
            ro.put_blob(b"x")
        with pytest.raises(PermissionError):
            ro.open_branch("b", "main", 1)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            ro.connection.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')")
