"""Through the command line: a run trained with background compilation on replays to its
fingerprint with compilation on, off, and as recorded (SPEC §6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esper_es.cli.main import main

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_run.toml"
CONFIG = TINY.read_text() + "[library]\ncompile = true\n"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    capsys.readouterr()
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    obj = json.loads(out.strip().splitlines()[-1])
    assert isinstance(obj, dict)
    return obj


def test_replay_with_compile_on_and_off_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    db = str(tmp_path / "run.db")
    trained = _run(capsys, "train", "--config", str(config), "--db", db)
    for extra in ((), ("--compile", "off"), ("--compile", "on")):
        replayed = _run(capsys, "replay", db, *extra)
        assert replayed["fingerprint"] == trained["fingerprint"], extra
    assert main(["replay", db, "--compile", "maybe"]) == 2
