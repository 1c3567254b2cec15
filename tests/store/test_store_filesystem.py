"""What the file system refuses is an error naming the cause, never a false tamper alarm and
never a traceback (SPEC §9): a read-only directory, a full disk.

Both are made for real where the machine allows it: a read-only bind mount and a tiny tmpfs
in a private mount namespace (`unshare -m`, as root), or `chmod` for an ordinary user.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from esper_es.errors import StorageError, TamperDetected
from esper_es.simulate import simulate
from esper_es.store.database import sqlite_failure

ESPER = f"{sys.executable} -m esper_es.cli.main"


def _namespaces() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


NAMESPACES = _namespaces()


def _in_namespace(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=180
    )


def test_a_valid_database_in_a_read_only_directory_verifies(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    simulate(src / "run.db", events=80, seed=1)
    for leftover in src.glob("run.db-*"):
        leftover.unlink()
    ro = tmp_path / "ro"
    ro.mkdir()
    if NAMESPACES:
        proc = _in_namespace(
            f"mount --bind -o ro {src} {ro} && {ESPER} verify {ro}/run.db --json && "
            f"{ESPER} inspect {ro}/run.db --at 10 --json"
        )
    elif os.geteuid() != 0:
        shutil.copytree(src, ro, dirs_exist_ok=True)
        ro.chmod(0o555)
        cmd = f"{ESPER} verify {ro}/run.db --json && {ESPER} inspect {ro}/run.db --at 10 --json"
        proc = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True)
        ro.chmod(0o755)
    else:
        pytest.skip("root without mount namespaces: no way to make a read-only directory")
    assert proc.returncode == 0, proc.stderr
    verified, inspected = (json.loads(line) for line in proc.stdout.strip().splitlines())
    assert verified["ok"] is True and inspected["at_seq"] == 10
    assert sorted(p.name for p in src.iterdir()) == ["run.db", "run.db.audit.jsonl"]


@pytest.mark.skipif(not NAMESPACES, reason="needs root and mount namespaces for a tiny tmpfs")
def test_a_full_disk_is_a_storage_error_and_the_data_stays_valid(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = _in_namespace(
        f"mount -t tmpfs -o size=600k tmpfs {mnt} && "
        f"{ESPER} simulate --db {mnt}/s.db --events 20000 --json; echo rc=$?; "
        f"{ESPER} verify {mnt}/s.db --json"
    )
    out = proc.stdout.strip().splitlines()
    failed = json.loads(out[0])
    assert out[1] == "rc=1", proc.stdout + proc.stderr
    assert failed["error"] == "StorageError" and "disk is full" in str(failed["message"])
    assert "Traceback" not in proc.stderr
    assert json.loads(out[2])["ok"] is True  # everything committed before stays verifiable


def _error(name: str, operational: bool = True) -> sqlite3.DatabaseError:
    exc = (sqlite3.OperationalError if operational else sqlite3.DatabaseError)("boom")
    exc.sqlite_errorname = name  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    ("name", "operational", "kind"),
    [
        ("SQLITE_CORRUPT", False, TamperDetected),
        ("SQLITE_NOTADB", False, TamperDetected),
        ("SQLITE_FULL", True, StorageError),
        ("SQLITE_CANTOPEN", True, StorageError),
        ("SQLITE_READONLY_DIRECTORY", True, StorageError),
        ("SQLITE_IOERR_WRITE", True, StorageError),
    ],
)
def test_sqlite_failures_are_classified_by_cause(name: str, operational: bool, kind: type) -> None:
    assert isinstance(sqlite_failure(Path("x.db"), _error(name, operational)), kind)
