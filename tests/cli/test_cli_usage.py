"""Usage errors exit 2; `--json` prints exactly one JSON object for every outcome."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from esper_es import __version__
from esper_es.errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE, EXIT_VERIFY


@pytest.mark.parametrize(
    "argv",
    [
        (),
        ("frobnicate",),
        ("verify",),
        ("history",),
        ("inspect",),
        ("simulate",),
        ("inspect", "x.db", "--at", "ten"),
        ("verify", "x.db", "--no-such-flag"),
        ("simulate", "--db", "x.db", "--events"),
    ],
)
def test_usage_errors_exit_2(cli, argv: tuple[str, ...]) -> None:
    r = cli(*argv)
    assert r.code == EXIT_USAGE
    assert r.out == ""
    assert "usage:" in r.err
    assert "esper-es:" in r.err


@pytest.mark.parametrize("argv", [("frobnicate", "--json"), ("verify", "--json")])
def test_usage_errors_with_json_print_one_object(cli, argv: tuple[str, ...]) -> None:
    r = cli(*argv)
    assert r.code == EXIT_USAGE
    obj = r.json()
    assert obj["error"] == "UsageError"
    assert obj["exit_code"] == EXIT_USAGE
    assert obj["message"]


def test_help_and_version_exit_0(cli) -> None:
    r = cli("--help")
    assert r.code == EXIT_OK
    for command in ("verify", "history", "inspect", "simulate", "check-lifecycle", "diagram"):
        assert command in r.out
    r = cli("--version")
    assert r.code == EXIT_OK
    assert __version__ in r.out


def _tampered(db: Path) -> Path:
    import sqlite3

    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER events_append_only_update")
    conn.execute("UPDATE events SET causation_id='forged' WHERE seq=10")
    conn.close()
    return db


@pytest.mark.parametrize(
    ("case", "code", "error"),
    [
        ("verify-ok", EXIT_OK, None),
        ("history-ok", EXIT_OK, None),
        ("inspect-ok", EXIT_OK, None),
        ("verify-tampered", EXIT_VERIFY, "TamperDetected"),
        ("verify-missing", EXIT_USAGE, "NotARunDatabase"),
        ("history-bad-branch", EXIT_USAGE, "UnknownBranch"),
        ("usage", EXIT_USAGE, "UsageError"),
    ],
)
def test_json_is_exactly_one_object_for_each_outcome(
    cli, db_copy: Path, tmp_path: Path, case: str, code: int, error: str | None
) -> None:
    argv = {
        "verify-ok": ("verify", db_copy),
        "history-ok": ("history", db_copy, "--limit", 3),
        "inspect-ok": ("inspect", db_copy),
        "verify-tampered": ("verify", _tampered(db_copy) if case == "verify-tampered" else ""),
        "verify-missing": ("verify", tmp_path / "missing.db"),
        "history-bad-branch": ("history", db_copy, "--branch", "b2"),
        "usage": ("inspect", db_copy, "--at"),
    }[case]
    r = cli(*argv, "--json")
    assert r.code == code
    obj = r.json()
    if error is None:
        assert "error" not in obj
        assert {"run_id", "branch", "head_seq", "fingerprint"} <= obj.keys()
    else:
        assert obj["error"] == error
        assert obj["exit_code"] == code
        assert "esper-es: " in r.err


@pytest.mark.parametrize("module", ["torch", "numpy"])
def test_a_missing_extra_says_what_to_install(tmp_path: Path, module: str) -> None:
    # What a bare `pip install esper-es` (no `torch` extra) meets on `train`.
    script = (
        "import sys\n"
        f"sys.modules[{module!r}] = None\n"
        "from esper_es.cli.main import main\n"
        f"sys.exit(main(['train', '--db', {str(tmp_path / 'r.db')!r}, '--epochs', '1']))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == EXIT_ERROR, r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("esper-es: ")]
    assert len(errors) == 1
    assert f"needs '{module}'" in errors[0]
    assert "esper-es[torch]" in r.stderr
