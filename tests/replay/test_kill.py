"""`kill -9` during `esper-es train`, then `esper-es resume`: the uninterrupted fingerprint."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from replay_support import comparable_log

from esper_es.cli.main import main
from esper_es.store.verify import verify


def _events(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def _train(config: Path, db: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "esper_es.cli.main", "train", "--config", str(config)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen(
        [*cmd, "--db", str(db), "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int, Path]:
    """Fingerprint, event count and database of the quick run, never interrupted."""
    from replay_support import QUICK

    root = tmp_path_factory.mktemp("kill")
    config = root / "quick.toml"
    config.write_text(QUICK, encoding="utf-8")
    proc = _train(config, root / "ref.db")
    out, _ = proc.communicate(timeout=120)
    obj = json.loads(out)
    return obj["fingerprint"], obj["head_seq"], root / "ref.db"


@pytest.mark.parametrize("fraction", [0.3, 0.7])
def test_sigkill_then_resume_is_bit_identical(
    uninterrupted: tuple[str, int, Path], quick_toml: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], fraction: float,
) -> None:  # fmt: skip
    fingerprint, total, reference = uninterrupted
    db = tmp_path / "killed.db"
    proc = _train(quick_toml, db)
    target = int(total * fraction)
    deadline = time.monotonic() + 120
    while _events(db) < target and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.returncode != -signal.SIGKILL:
        pytest.skip("the run finished before it could be killed")
    verify(db)
    assert main(["resume", str(db), "--json"]) == 0
    obj = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert obj["fingerprint"] == fingerprint
    verify(db)
    # No stop event: the resumed log equals the uninterrupted one, ids and snapshots included.
    assert comparable_log(db, ids=True) == comparable_log(reference, ids=True)
