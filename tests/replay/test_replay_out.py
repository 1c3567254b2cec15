"""`replay --out` to a place that cannot take the file: one line and exit 1 before any step,
never a traceback (SPEC §9; torch's writer raised a bare RuntimeError)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from esper_es.cli.main import main


@pytest.fixture
def run(corpus_copy: Callable[[str], Path]) -> Path:
    """A copy of the corpus run `digits`."""
    db = corpus_copy("digits")
    return db


def _replay_out(out: Path, run: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    capsys.readouterr()
    code = main(["replay", str(run), "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 1, captured
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1
    obj = json.loads(captured.out)
    assert isinstance(obj, dict) and obj["error"] == "StorageError"
    return obj


def test_a_missing_directory(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    obj = _replay_out(tmp_path / "nope" / "m.pt", run, capsys)
    assert "no such directory" in str(obj["message"])


def test_a_directory_as_the_file(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _replay_out(tmp_path, run, capsys)


def test_a_read_only_directory(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    # As root a chmod does not stop writes; the check asks the OS what this user may do.
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro else real(p, mode))
    obj = _replay_out(ro / "m.pt", run, capsys)
    assert "cannot write there" in str(obj["message"])
    assert list(ro.iterdir()) == []
