"""`verify` catches tampering and names the first bad seq (SPEC §3, §9)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from esper_es.errors import TamperDetected
from esper_es.store import RunDatabase, verify
from esper_es.store.chain import row_hash
from esper_es.store.database import audit_path

#: Every column but `hash`, in `row_hash` argument order after `prev_hash` (which comes last).
ROW_COLUMNS = (
    "seq, event_id, run_id, branch, stream, stream_version, type, schema_version,"
    " payload, causation_id, correlation_id, recorded_at, prev_hash"
)


def rehash(row: list[Any]) -> str:
    """The hash a row (in ROW_COLUMNS order) must carry to look untouched."""
    *columns, prev_hash = row
    return row_hash(prev_hash, *columns)


def test_untouched_history_verifies(history: Any) -> None:
    report = verify(history.path)
    assert report.events == report.head_seq == history.length
    assert report.run_id == history.run_id
    assert report.blobs == 1
    assert report.audit_lines == history.length
    assert report.branches == ("main",)
    # run, layer:layer1, seed:layer1/0, seed:layer1/1, controller
    assert report.streams == 5
    with RunDatabase.open(history.path, readonly=True) as db:
        assert report.head_hash == db.head()[1]


def test_verify_works_while_a_writer_holds_the_database(history: Any) -> None:
    with RunDatabase.open(history.path):
        assert verify(history.path).events == history.length


def raises_at(path: Path, seq: int | None) -> TamperDetected:
    """Run verify, expecting it to name `seq` as the first bad one."""
    with pytest.raises(TamperDetected) as info:
        verify(path)
    assert info.value.seq == seq, info.value.reason
    assert info.value.exit_code == 3
    return info.value


def test_a_changed_payload_byte_is_caught_at_its_seq(history: Any, tamper: Any) -> None:
    seq = history.seq["s0_alpha_half"]
    with tamper(history.path) as conn:
        (payload,) = conn.execute("SELECT payload FROM events WHERE seq=?", (seq,)).fetchone()
        assert '"alpha":0.5' in payload
        conn.execute(
            "UPDATE events SET payload=? WHERE seq=?",
            (payload.replace('"alpha":0.5', '"alpha":0.6'), seq),
        )
    err = raises_at(history.path, seq)
    assert "hash" in err.reason


def test_a_rehashed_row_breaks_the_chain_at_the_next_seq(history: Any, tamper: Any) -> None:
    """Recomputing the altered row's own hash moves the break to the row after it."""
    seq = history.seq["s0_alpha_half"]
    with tamper(history.path) as conn:
        row = conn.execute(f"SELECT {ROW_COLUMNS} FROM events WHERE seq=?", (seq,)).fetchone()
        payload = row[8].replace('"alpha":0.5', '"alpha":0.6')
        h = rehash([*row[:8], payload, *row[9:]])
        conn.execute("UPDATE events SET payload=?, hash=? WHERE seq=?", (payload, h, seq))
    err = raises_at(history.path, seq + 1)
    assert "chain" in err.reason


def test_a_deleted_row_is_caught_at_its_seq(history: Any, tamper: Any) -> None:
    seq = history.seq["s0_grafting"]
    with tamper(history.path) as conn:
        conn.execute("DELETE FROM events WHERE seq=?", (seq,))
    err = raises_at(history.path, seq)
    assert "missing" in err.reason


def test_swapped_rows_are_caught_at_the_lower_seq(history: Any, tamper: Any) -> None:
    low, high = history.seq["s0_training"], history.seq["s1_germinated"]
    with tamper(history.path) as conn:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(events)") if r[1] != "seq"]
        rows = {
            seq: conn.execute(
                f"SELECT {', '.join(cols)} FROM events WHERE seq=?", (seq,)
            ).fetchone()
            for seq in (low, high)
        }
        conn.execute("DELETE FROM events WHERE seq IN (?, ?)", (low, high))
        marks = ", ".join("?" * (len(cols) + 1))
        for seq, other in ((low, high), (high, low)):
            conn.execute(
                f"INSERT INTO events (seq, {', '.join(cols)}) VALUES ({marks})",
                (seq, *rows[other]),
            )
    raises_at(history.path, low)


def test_triggers_dropped_with_rows_intact_fails(history: Any, tamper: Any) -> None:
    with tamper(history.path, restore_triggers=False):
        pass
    with RunDatabase.open(history.path, readonly=True) as db:
        assert len(list(db.read())) == history.length  # the log itself reads fine
    err = raises_at(history.path, None)
    assert "trigger" in err.reason


def test_one_trigger_dropped_fails(history: Any) -> None:
    conn = sqlite3.connect(history.path)
    conn.execute("DROP TRIGGER events_append_only_delete")
    conn.commit()
    conn.close()
    err = raises_at(history.path, None)
    assert "events_append_only_delete" in err.reason


def test_a_cut_tail_is_caught_through_the_audit_trail(history: Any, tamper: Any) -> None:
    last = history.length
    with tamper(history.path) as conn:
        conn.execute("DELETE FROM events WHERE seq >= ?", (last - 1,))
    # The cut log is a valid prefix on its own: only the audit trail remembers more.
    err = raises_at(history.path, last - 1)
    assert "audit trail" in err.reason


def test_a_cut_tail_without_audit_trail_is_a_valid_prefix(history: Any, tamper: Any) -> None:
    """Documents the limit of the cross-check: with the trail gone too, a prefix verifies."""
    with tamper(history.path) as conn:
        conn.execute("DELETE FROM events WHERE seq >= ?", (history.length - 1,))
    audit_path(history.path).unlink()
    assert verify(history.path).head_seq == history.length - 2


def test_an_audit_trail_hash_mismatch_is_caught(history: Any) -> None:
    trail = audit_path(history.path)
    lines = trail.read_text("utf-8").splitlines(keepends=True)
    with RunDatabase.open(history.path, readonly=True) as db:
        real = next(r.hash for r in db.read() if r.seq == 4)
    lines[3] = lines[3].replace(real, "f" * 64)
    trail.write_text("".join(lines), "utf-8")
    raises_at(history.path, 4)


def test_a_torn_last_audit_line_is_tolerated(history: Any) -> None:
    with audit_path(history.path).open("a", encoding="utf-8") as fh:
        fh.write('{"seq": 13, "ha')
    assert verify(history.path).events == history.length


def test_an_altered_blob_is_caught(history: Any, tamper: Any) -> None:
    with tamper(history.path) as conn:
        (key,) = conn.execute("SELECT key FROM blobs").fetchone()
        conn.execute("UPDATE blobs SET data = ? WHERE key = ?", (b"evil" * 10, key))
    err = raises_at(history.path, None)
    assert key in err.reason
    with RunDatabase.open(history.path, readonly=True) as db, pytest.raises(TamperDetected):
        db.get_blob(key)


def test_a_blob_with_a_wrong_size_is_caught(history: Any, tamper: Any) -> None:
    with tamper(history.path) as conn:
        conn.execute("UPDATE blobs SET size = size + 1")
    raises_at(history.path, None)


def test_an_impossible_history_is_caught(history: Any, tamper: Any) -> None:
    """A row rewritten and re-chained consistently still fails: the events must fold."""
    # Re-type seq 4 (SeedTrainingStarted) as SeedFossilized: schema-valid, hash-valid, impossible.
    target = history.seq["s0_training"]
    with tamper(history.path) as conn:
        cols = ROW_COLUMNS
        found = conn.execute(f"SELECT {cols} FROM events WHERE seq >= ? ORDER BY seq", (target,))
        rows = [list(r) for r in found]
        rows[0][6] = "SeedFossilized"
        rows[0][8] = '{"contribution":1.0,"instability":0.0,"seed":"layer1/0","step":2}'
        prev = rows[0][12]
        conn.execute("DELETE FROM events WHERE seq >= ?", (target,))
        for r in rows:
            h = rehash([*r[:12], prev])
            conn.execute(
                f"INSERT INTO events ({cols}, hash) VALUES ({', '.join('?' * 14)})",
                (*r[:12], prev, h),
            )
            prev = h
    audit_path(history.path).unlink()  # so the chain itself, not the trail, has to catch it
    err = raises_at(history.path, target)
    assert "impossible history" in err.reason


def test_a_non_canonical_payload_is_caught(history: Any, tamper: Any) -> None:
    """Same JSON value, different bytes, rehashed: refused as non-canonical."""
    seq = history.length
    with tamper(history.path) as conn:
        row = conn.execute(f"SELECT {ROW_COLUMNS} FROM events WHERE seq=?", (seq,)).fetchone()
        payload = row[8].replace(",", ", ")
        h = rehash([*row[:8], payload, *row[9:]])
        conn.execute("UPDATE events SET payload=?, hash=? WHERE seq=?", (payload, h, seq))
    audit_path(history.path).unlink()
    err = raises_at(history.path, seq)
    assert "canonical" in err.reason


# --- truncated files ------------------------------------------------------------------


def test_a_file_truncated_to_60_percent_is_caught(padded_history: Any) -> None:
    path = padded_history.path
    assert not Path(str(path) + "-wal").exists() or os.path.getsize(str(path) + "-wal") == 0
    size = path.stat().st_size
    assert size > 20 * 4096, "the padded history should span many pages"
    with path.open("r+b") as fh:
        fh.truncate(int(size * 0.6))
    with pytest.raises(TamperDetected) as info:
        verify(path)
    assert info.value.exit_code == 3


@pytest.mark.parametrize("fraction", [0.9, 0.3])
def test_other_truncations_are_caught(padded_history: Any, fraction: float) -> None:
    path = padded_history.path
    with path.open("r+b") as fh:
        fh.truncate(int(path.stat().st_size * fraction))
    with pytest.raises(TamperDetected):
        verify(path)


def test_a_file_truncated_to_10_bytes_is_caught(history: Any) -> None:
    with history.path.open("r+b") as fh:
        fh.truncate(10)
    with pytest.raises(TamperDetected) as info:
        verify(history.path)
    assert "truncated" in info.value.reason
    with pytest.raises(TamperDetected):
        RunDatabase.open(history.path)
