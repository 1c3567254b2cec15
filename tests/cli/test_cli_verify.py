"""`esper-es verify`: 0 on an intact run, 3 on tampering or truncation, 2 on a non-database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from esper_es.errors import EXIT_OK, EXIT_USAGE, EXIT_VERIFY
from esper_es.store.database import TRIGGERS


def _rows(path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _head(path: Path) -> tuple[int, str]:
    (row,) = _rows(path, "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
    return int(row[0]), str(row[1])  # type: ignore[call-overload]


def _tamper(path: Path, *statements: str, drop: tuple[str, ...] = TRIGGERS) -> None:
    """Run `statements` with the append-only triggers dropped, then put the triggers back."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        ddl = {
            name: sql
            for name, sql in conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type='trigger'"
            )
        }
        for name in drop:
            conn.execute(f"DROP TRIGGER {name}")
        for stmt in statements:
            conn.execute(stmt)
        for name in drop:
            conn.execute(ddl[name])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def test_verify_passes_on_a_simulated_run(cli, sim_db: Path) -> None:
    r = cli("verify", sim_db)
    assert r.code == EXIT_OK
    assert r.out.startswith("OK")
    head_seq, head_hash = _head(sim_db)

    obj = cli("verify", sim_db, "--json").json()
    assert obj["ok"] is True
    assert {"run_id", "branch", "head_seq", "fingerprint", "head_hash"} <= obj.keys()
    assert obj["run_id"].startswith("sim-")
    assert obj["branch"] == "main"
    assert obj["head_seq"] == obj["events"] == head_seq
    assert obj["head_hash"] == head_hash
    assert obj["branches"] == ["main"]
    assert obj["audit_lines"] == head_seq


def test_verify_names_the_seq_whose_payload_byte_was_edited_in_the_file(cli, db_copy: Path) -> None:
    # A germination in the middle of the log: its kernel id occurs nowhere else in the file.
    (row,) = _rows(
        db_copy,
        "SELECT seq, json_extract(payload, '$.kernel_id') FROM events "
        "WHERE type='SeedGerminated' AND seq > 1000 ORDER BY seq LIMIT 1",
    )
    seq, kernel = int(row[0]), str(row[1])  # type: ignore[call-overload]
    data = bytearray(db_copy.read_bytes())
    needle = kernel.encode()
    assert data.count(needle) == 1
    # One hex digit changed to another: still valid, canonical, schema-conforming JSON, so
    # only the hash chain can notice.
    i = data.index(needle) + len(needle) - 1
    data[i] = ord("0") if data[i] != ord("0") else ord("1")
    db_copy.write_bytes(bytes(data))

    r = cli("verify", db_copy, "--json")
    assert r.code == EXIT_VERIFY
    obj = r.json()
    assert obj["error"] == "TamperDetected"
    assert obj["ok"] is False
    assert obj["exit_code"] == EXIT_VERIFY
    assert obj["first_bad_seq"] == seq
    assert "hash" in obj["reason"]
    assert f"seq {seq}" in r.err


@pytest.mark.parametrize("restore_triggers", [True, False])
def test_verify_names_the_seq_updated_behind_the_triggers(
    cli, db_copy: Path, restore_triggers: bool
) -> None:
    seq = 1234
    (before,) = _rows(db_copy, "SELECT payload FROM events WHERE seq=?", seq)
    edited = str(before[0]).replace('"step":', '"step":1', 1)
    conn = sqlite3.connect(db_copy, isolation_level=None)
    conn.execute("DROP TRIGGER events_append_only_update")
    conn.execute("UPDATE events SET payload=? WHERE seq=?", (edited, seq))
    if restore_triggers:
        conn.execute(
            "CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events"
            " BEGIN SELECT RAISE(ABORT, 'x'); END"
        )
    conn.close()

    r = cli("verify", db_copy, "--json")
    assert r.code == EXIT_VERIFY
    assert r.json()["first_bad_seq"] == seq


def test_verify_catches_a_removed_trigger_alone(cli, db_copy: Path) -> None:
    conn = sqlite3.connect(db_copy, isolation_level=None)
    conn.execute("DROP TRIGGER events_append_only_delete")
    conn.close()
    r = cli("verify", db_copy, "--json")
    assert r.code == EXIT_VERIFY
    obj = r.json()
    assert obj["first_bad_seq"] is None
    assert "events_append_only_delete" in obj["reason"]


def test_verify_catches_a_cut_tail_through_the_audit_trail(cli, db_copy: Path) -> None:
    head, _ = _head(db_copy)
    _tamper(db_copy, f"DELETE FROM events WHERE seq > {head - 5}")
    r = cli("verify", db_copy, "--json")
    assert r.code == EXIT_VERIFY
    obj = r.json()
    assert obj["first_bad_seq"] == head - 4
    assert "removed from the end" in obj["reason"]


def test_verify_catches_a_gap_in_seq(cli, db_copy: Path) -> None:
    _tamper(db_copy, "DELETE FROM events WHERE seq = 500")
    r = cli("verify", db_copy, "--json")
    assert r.code == EXIT_VERIFY
    assert r.json()["first_bad_seq"] == 500


@pytest.mark.parametrize("size", [10, 4096, "half"])
def test_verify_refuses_a_truncated_database(cli, db_copy: Path, size: int | str) -> None:
    full = db_copy.stat().st_size
    with db_copy.open("r+b") as fh:
        fh.truncate(full // 2 if size == "half" else int(size))
    r = cli("verify", db_copy, "--json")
    assert r.code == EXIT_VERIFY, r.out
    obj = r.json()
    assert obj["error"] == "TamperDetected"
    assert "truncated" in obj["reason"] or "corrupt" in obj["reason"]


def _text_file(tmp_path: Path) -> Path:
    p = tmp_path / "notes.txt"
    p.write_text("these are my notes about the run, not a database\n" * 20)
    return p


def _short_text_file(tmp_path: Path) -> Path:
    # Shorter than SQLite's 16-byte magic: once misreported as a truncated database (exit 3).
    p = tmp_path / "short.txt"
    p.write_text("hello\n")
    return p


def _empty_file(tmp_path: Path) -> Path:
    p = tmp_path / "empty.db"
    p.touch()
    return p


def _directory(tmp_path: Path) -> Path:
    p = tmp_path / "a_dir"
    p.mkdir()
    return p


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "missing.db"


def _foreign_sqlite(tmp_path: Path) -> Path:
    p = tmp_path / "other.sqlite"
    conn = sqlite3.connect(p)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    return p


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (_text_file, "not an SQLite file"),
        (_short_text_file, "not an SQLite file"),
        (_empty_file, "not an SQLite file"),
        (_directory, "is a directory"),
        (_missing, "no such file"),
        (_foreign_sqlite, "without esper-es tables"),
    ],
)
def test_verify_refuses_what_is_not_a_run_database(cli, tmp_path: Path, make, words: str) -> None:
    path = make(tmp_path)
    r = cli("verify", path, "--json")
    assert r.code == EXIT_USAGE
    obj = r.json()
    assert obj["error"] == "NotARunDatabase"
    assert obj["exit_code"] == EXIT_USAGE
    assert words in obj["message"]
    assert str(path) in obj["message"]
    # Without --json: nothing on stdout, the message on stderr.
    r = cli("verify", path)
    assert r.code == EXIT_USAGE
    assert r.out == ""
    assert words in r.err


def test_verify_refuses_a_newer_format(cli, db_copy: Path) -> None:
    conn = sqlite3.connect(db_copy, isolation_level=None)
    conn.execute("UPDATE meta SET value='99' WHERE key='format_version'")
    conn.close()
    r = cli("verify", db_copy, "--json")
    assert r.code == EXIT_USAGE
    assert "newer" in r.json()["message"]
