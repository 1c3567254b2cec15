"""The CLI as the shell sees it: exit codes of real processes, one JSON object on stdout."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esper_es.errors import EXIT_OK, EXIT_USAGE, EXIT_VERIFY
from esper_es.store.verify import verify

EXIT_INTERRUPTED = 130
CONSOLE_SCRIPT = Path(sys.executable).with_name("esper-es")


def esper(*args: object, script: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `esper-es ARGS` in a fresh process (the console script, or `python -m`)."""
    head = [str(CONSOLE_SCRIPT)] if script else [sys.executable, "-m", "esper_es.cli.main"]
    return subprocess.run([*head, *map(str, args)], capture_output=True, text=True, timeout=120)


def _one_object(stdout: str) -> dict[str, object]:
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    obj: dict[str, object] = json.loads(lines[0])
    return obj


@pytest.mark.skipif(not CONSOLE_SCRIPT.exists(), reason="esper-es console script not installed")
def test_console_script_exit_codes(sim_db: Path, tmp_path: Path) -> None:
    ok = esper("verify", sim_db, "--json", script=True)
    assert ok.returncode == EXIT_OK
    assert _one_object(ok.stdout)["ok"] is True

    bad = tmp_path / "bad.db"
    shutil.copyfile(sim_db, bad)
    conn = sqlite3.connect(bad, isolation_level=None)
    conn.execute("DROP TRIGGER events_append_only_update")
    conn.execute("UPDATE events SET recorded_at='2000-01-01T00:00:00+00:00' WHERE seq=77")
    conn.close()
    tampered = esper("verify", bad, "--json", script=True)
    assert tampered.returncode == EXIT_VERIFY
    assert _one_object(tampered.stdout)["first_bad_seq"] == 77

    missing = esper("verify", tmp_path / "missing.db", "--json", script=True)
    assert missing.returncode == EXIT_USAGE
    assert _one_object(missing.stdout)["error"] == "NotARunDatabase"

    usage = esper("no-such-command", script=True)
    assert usage.returncode == EXIT_USAGE
    assert usage.stdout == ""
    assert "usage:" in usage.stderr


def test_python_m_runs_the_same_cli(sim_db: Path) -> None:
    r = esper("inspect", sim_db, "--at", 100, "--json")
    assert r.returncode == EXIT_OK
    obj = _one_object(r.stdout)
    assert obj["at_seq"] == 100
    assert r.stderr == ""


def test_ctrl_c_exits_130_with_one_json_object_and_a_verifiable_run(tmp_path: Path) -> None:
    db = tmp_path / "sigint.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "esper_es.cli.main", "simulate", "--db", str(db),
         "--events", "1000000", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        seen = 0
        while seen < 100:
            assert proc.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.02)
            if db.exists():
                try:
                    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                    seen = c.execute("SELECT COUNT(*) FROM events").fetchone()[0]
                    c.close()
                except sqlite3.OperationalError:
                    seen = 0
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == EXIT_INTERRUPTED, err
    obj = _one_object(out)
    # Caught inside the step loop it is a report; anywhere else, an error object.
    assert obj.get("interrupted") is True or obj.get("error") == "Interrupted"
    assert verify(db).head_seq >= seen
