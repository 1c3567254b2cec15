"""What lies outside the hash chain but changes what a replay does is covered by `verify` and
by the check before replay / resume / rollback (SPEC §9): the branches table, kernel artifact
rows, and bytes appended after the database's last page. Each used to pass `verify`."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from esper_es.cli.main import main
from esper_es.errors import TamperDetected
from esper_es.store.database import RunDatabase
from esper_es.store.verify import check_chain, verify


@pytest.fixture
def run(corpus_copy: Callable[[str], Path]) -> Path:
    """A copy of the corpus run `rollback`, checked."""
    db = corpus_copy("rollback")
    verify(db)
    return db


def _raw(db: Path, *sql: str) -> None:
    # What someone with write access does: the triggers guard only `events`.
    conn = sqlite3.connect(db)
    for statement in sql:
        conn.execute(statement)
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _both_refuse(db: Path, match: str) -> None:
    with pytest.raises(TamperDetected, match=match):
        verify(db)
    with RunDatabase.open(db, readonly=True) as rdb, pytest.raises(TamperDetected, match=match):
        check_chain(rdb)


def test_a_moved_fork_point_is_caught(run: Path) -> None:
    _raw(run, "UPDATE branches SET fork_seq = fork_seq - 3 WHERE name = 'b1'")
    _both_refuse(run, "'b1'")  # verify may meet a stream gap on b1 first
    assert main(["replay", str(run), "--branch", "b1", "--json"]) == 3


def test_a_reparented_branch_is_caught(run: Path) -> None:
    _raw(run, "UPDATE branches SET parent = 'b1' WHERE name = 'main'")
    _both_refuse(run, "main a parent")


def test_a_repointed_kernel_artifact_is_caught(run: Path) -> None:
    conn = sqlite3.connect(run)
    (a, key_a), (_, key_b) = conn.execute(
        "SELECT kernel_id, blob_key FROM kernel_artifacts ORDER BY kernel_id LIMIT 2"
    ).fetchall()
    conn.close()
    assert key_a != key_b
    _raw(run, f"UPDATE kernel_artifacts SET blob_key = '{key_b}' WHERE kernel_id = '{a}'")
    _both_refuse(run, f"kernel {a}: its artifact row does not match")
    assert main(["resume", str(run), "--json"]) == 3


def test_an_artifact_row_for_a_kernel_never_germinated_is_caught(run: Path) -> None:
    conn = sqlite3.connect(run)
    row = conn.execute("SELECT * FROM kernel_artifacts LIMIT 1").fetchone()
    conn.close()
    forged = ("f" * len(row[0]), *row[1:])
    _raw(run, f"INSERT INTO kernel_artifacts VALUES ({','.join(repr(v) for v in forged)})")
    _both_refuse(run, "its artifact row does not match|no SeedGerminated")


def test_junk_appended_to_the_file_is_caught(run: Path) -> None:
    with run.open("ab") as fh:
        fh.write(b"\x00junk" * 820)
    _both_refuse(run, "bytes follow the database's last page")
