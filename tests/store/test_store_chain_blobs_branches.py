"""The hash chain's row encoding, content-addressed blobs, and branches opened by rollback."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_es.core import events as ev
from esper_es.core.canonical import canonical_json
from esper_es.core.envelope import NewEvent
from esper_es.errors import ConcurrencyError
from esper_es.store import RunDatabase, verify
from esper_es.store.chain import GENESIS, row_hash, row_json

# --- the chain's hand-built canonical JSON --------------------------------------------

# Every code point, surrogates included, plus the characters JSON must escape, made likely.
TEXT = st.text(
    alphabet=st.one_of(
        st.characters(),
        st.sampled_from(['"', "\\", "\n", "\t", "\x00", "\x1f", "\x7f", "\u2028", "é", "🙂"]),
    )
)
BIG = st.integers(min_value=-(2**70), max_value=2**70)


@settings(max_examples=300, deadline=None)
@given(
    seq=BIG, event_id=TEXT, run_id=TEXT, branch=TEXT, stream=TEXT, stream_version=BIG,
    type_name=TEXT, schema_version=BIG, payload=TEXT, causation_id=st.none() | TEXT,
    correlation_id=st.none() | TEXT, recorded_at=TEXT, prev=st.text("0123456789abcdef"),
)  # fmt: skip
def test_row_json_equals_canonical_json(
    seq: int, event_id: str, run_id: str, branch: str, stream: str, stream_version: int,
    type_name: str, schema_version: int, payload: str, causation_id: str | None,
    correlation_id: str | None, recorded_at: str, prev: str,
) -> None:  # fmt: skip
    columns = {
        "seq": seq, "event_id": event_id, "run_id": run_id, "branch": branch, "stream": stream,
        "stream_version": stream_version, "type": type_name, "schema_version": schema_version,
        "payload": payload, "causation_id": causation_id, "correlation_id": correlation_id,
        "recorded_at": recorded_at,
    }  # fmt: skip
    args = (seq, event_id, run_id, branch, stream, stream_version, type_name, schema_version,
            payload, causation_id, correlation_id, recorded_at)  # fmt: skip
    assert row_json(*args) == canonical_json(columns)
    # SPEC §3: hash = sha256(prev_hash ‖ canonical JSON of every other column).
    want = hashlib.sha256((prev + canonical_json(columns)).encode("utf-8", "surrogatepass"))
    if all(not 0xD800 <= ord(ch) <= 0xDFFF for ch in canonical_json(columns)):
        assert row_hash(prev, *args) == want.hexdigest()


def test_stored_hashes_follow_the_spec_formula(history: Any) -> None:
    with RunDatabase.open(history.path, readonly=True) as db:
        prev = GENESIS
        for rec in db.read():
            columns = {
                "seq": rec.seq, "event_id": rec.event_id, "run_id": rec.run_id,
                "branch": rec.branch, "stream": rec.stream, "stream_version": rec.stream_version,
                "type": rec.type, "schema_version": rec.schema_version,
                "payload": canonical_json(dict(rec.payload)), "causation_id": rec.causation_id,
                "correlation_id": rec.correlation_id, "recorded_at": rec.recorded_at,
            }  # fmt: skip
            assert rec.prev_hash == prev
            want = hashlib.sha256((prev + canonical_json(columns)).encode("utf-8")).hexdigest()
            assert rec.hash == want
            prev = rec.hash
    assert GENESIS == "0" * 64


# --- blobs ----------------------------------------------------------------------------


def test_blobs_are_content_addressed(db: RunDatabase) -> None:
    data = bytes(range(256)) * 4
    key = db.put_blob(data)
    assert key == hashlib.sha256(data).hexdigest()
    assert db.put_blob(data) == key
    assert db.connection.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 1
    assert db.has_blob(key)
    assert db.get_blob(key) == data
    other = db.put_blob(b"")
    assert other == hashlib.sha256(b"").hexdigest() and db.get_blob(other) == b""
    assert db.connection.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 2
    assert db.connection.execute("SELECT size FROM blobs WHERE key=?", (key,)).fetchone()[0] == 1024


def test_put_blobs_stores_a_batch_once_each(db: RunDatabase) -> None:
    """put_blobs writes new blobs in one go, skips stored ones, and keys them like put_blob."""
    first = db.put_blob(b"kept")
    keys = db.put_blobs([b"kept", b"new", b"new"])
    assert keys == [first, hashlib.sha256(b"new").hexdigest(), hashlib.sha256(b"new").hexdigest()]
    assert db.get_blob(keys[1]) == b"new"
    assert db.connection.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 2
    assert db.put_blobs([]) == []


def test_staged_blobs_are_written_with_the_next_append(db: RunDatabase, db_path: Path) -> None:
    """A snapshot's blobs and the event naming it share one transaction (one fsync)."""
    key = db.stage_blobs([b"snapshot"])[0]
    assert key == hashlib.sha256(b"snapshot").hexdigest()
    assert db.has_blob(key) and db.get_blob(key) == b"snapshot"  # this writer reads it
    with RunDatabase.open(db_path, readonly=True) as ro:
        assert not ro.has_blob(key)  # nobody else does, before the event that names it
    db.append("run", 0, [NewEvent(ev.RunStarted(run_id="r", master_seed=1, config={}), "e1")])
    with RunDatabase.open(db_path, readonly=True) as ro:
        assert ro.get_blob(key) == b"snapshot"


def test_staged_blobs_are_written_on_close(db_path: Path) -> None:
    with RunDatabase.create(db_path, "r") as db:
        key = db.stage_blobs([b"last"])[0]
    with RunDatabase.open(db_path, readonly=True) as ro:
        assert ro.get_blob(key) == b"last"
    assert verify(db_path).blobs == 1


def test_missing_blob_is_a_key_error(db: RunDatabase) -> None:
    assert not db.has_blob("0" * 64)
    with pytest.raises(KeyError):
        db.get_blob("0" * 64)


def test_blobs_survive_reopen_and_verify(db_path: Path) -> None:
    with RunDatabase.create(db_path, "r") as db:
        keys = [db.put_blob(bytes([i]) * 100) for i in range(5)]
    with RunDatabase.open(db_path, readonly=True) as ro:
        assert [ro.get_blob(k) for k in keys] == [bytes([i]) * 100 for i in range(5)]
    assert verify(db_path).blobs == 5


# --- branches -------------------------------------------------------------------------

S0, S1 = "layer1/0", "layer1/1"


def test_branch_continues_from_the_fork_point(history: Any) -> None:
    seq = history.seq
    fork = seq["s0_alpha_half"]  # seed 0 is GRAFTING at alpha 0.5 here, its stream at version 4
    with RunDatabase.open(history.path) as db:
        main_s0 = db.stream_version(f"seed:{S0}")
        assert main_s0 == 6
        b = db.open_branch("retry", "main", fork)
        assert (b.name, b.parent, b.fork_seq, b.created_seq) == (
            "retry",
            "main",
            fork,
            history.length,
        )
        assert [x.name for x in db.branches()] == ["main", "retry"]
        # Streams on the branch continue from the fork point, not from main's head.
        assert db.stream_version(f"seed:{S0}", branch="retry") == 4
        assert db.stream_version(f"seed:{S1}", branch="retry") == 0  # born after the fork
        assert db.stream_version("run", branch="retry") == 1
        # What a rollback writes first on its branch (verify checks the table against it).
        opened = ev.RunRolledBack(epoch=1, step=35, from_branch="main", branch="retry", to_seq=fork)
        db.append("run", 1, [NewEvent(opened, "rb")], branch="retry")
        with pytest.raises(ConcurrencyError):
            db.append(
                f"seed:{S0}", 6, [NewEvent(ev.SeedCulled(seed=S0, step=99), "x")], branch="retry"
            )
        r = db.append(
            f"seed:{S0}",
            4,
            [NewEvent(ev.SeedRolledBack(seed=S0, step=35, reason="retry"), "b1")],
            branch="retry",
        )
        assert r.version == 5 and r.seqs == (history.length + 2,)
        # Main is untouched by the branch, and moves on independently.
        assert db.stream_version(f"seed:{S0}") == 6
        db.append(f"seed:{S0}", 6, [NewEvent(ev.BlendAdjusted(seed=S0, step=40, alpha=0.9), "m1")])
        assert db.stream_version(f"seed:{S0}") == 7
        assert db.stream_version(f"seed:{S0}", branch="retry") == 5

        on_branch = list(db.read(branch="retry"))
        assert [e.seq for e in on_branch] == [
            *range(1, fork + 1),
            history.length + 1,
            history.length + 2,
        ]
        assert on_branch[-1].branch == "retry" and on_branch[-1].stream_version == 5
        assert all(e.branch == "main" for e in on_branch[:-2])
        on_main = list(db.read())
        assert [e.seq for e in on_main] == [*range(1, history.length + 1), history.length + 3]
        assert len(list(db.read(branch=None))) == history.length + 3
        assert [e.seq for e in db.read(branch="retry", stream=f"seed:{S0}")] == [
            3,
            4,
            5,
            6,
            history.length + 2,
        ]
        assert db.head_seq("retry") == history.length + 2
        assert db.head_seq("main") == history.length + 3

    report = verify(history.path)
    assert report.branches == ("main", "retry")
    assert report.events == history.length + 3
    # Reopened, the branch and its versions come back from the file.
    with RunDatabase.open(history.path, readonly=True) as ro:
        assert ro.branch("retry").fork_seq == fork
        assert ro.stream_version(f"seed:{S0}", branch="retry") == 5


def _opened(name: str, parent: str, fork: int) -> NewEvent:
    """The `RunRolledBack` a rollback writes first on the branch it opens."""
    event = ev.RunRolledBack(epoch=1, step=30, from_branch=parent, branch=name, to_seq=fork)
    return NewEvent(event, f"open-{name}")


def test_branch_of_a_branch(history: Any) -> None:
    n = history.length
    with RunDatabase.open(history.path) as db:
        db.open_branch("a", "main", 5)
        db.append("run", 1, [_opened("a", "main", 5)], branch="a")
        db.append(
            f"seed:{S0}", 3, [NewEvent(ev.SeedRolledBack(seed=S0, step=31), "a1")], branch="a"
        )
        db.append(
            f"seed:{S0}",
            4,
            [NewEvent(ev.SeedEmbargoed(seed=S0, step=32, until_step=80), "a2")],
            branch="a",
        )
        db.open_branch("b", "a", n + 2)  # after a1, before a2
        db.append("run", 2, [_opened("b", "a", n + 2)], branch="b")
        assert db.stream_version(f"seed:{S0}", branch="b") == 4
        assert [e.seq for e in db.read(branch="b")] == [1, 2, 3, 4, 5, n + 1, n + 2, n + 4]
        db.append(
            f"seed:{S0}",
            4,
            [NewEvent(ev.SeedEmbargoed(seed=S0, step=33, until_step=90), "b1")],
            branch="b",
        )
        seqs = [e.seq for e in db.read(branch="b")]
        assert seqs == [1, 2, 3, 4, 5, n + 1, n + 2, n + 4, n + 5]
        assert db.lineage("b") == [("b", None), ("a", n + 2), ("main", 5)]
    verify(history.path)


def test_open_branch_refuses_bad_arguments(history: Any) -> None:
    with RunDatabase.open(history.path) as db:
        with pytest.raises(ValueError, match="already exists"):
            db.open_branch("main", "main", 1)
        with pytest.raises(KeyError):
            db.open_branch("x", "nope", 1)
        with pytest.raises(ValueError, match="outside"):
            db.open_branch("x", "main", history.length + 1)
        with pytest.raises(KeyError):
            db.append(f"seed:{S0}", 6, [NewEvent(ev.SeedCulled(seed=S0, step=99), "x")], branch="x")
        assert [b.name for b in db.branches()] == ["main"]
