"""A simulated run trained no model: replay, resume and rollback say so in one line (exit 2)
instead of listing every environment field it does not have (issue 10)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esper_es.cli.main import main
from esper_es.simulate import simulate


@pytest.mark.parametrize("argv", [["replay"], ["resume"], ["rollback", "--to", "9"]])
def test_a_simulated_run_is_not_replayable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    db = tmp_path / "sim.db"
    simulate(db, events=40, seed=1)
    head = db.stat().st_size
    capsys.readouterr()
    code = main([argv[0], str(db), *argv[1:], "--json"])
    captured = capsys.readouterr()
    assert code == 2
    obj = json.loads(captured.out)
    assert obj["error"] == "NotReplayable" and "simulated run" in obj["message"]
    assert len(captured.err.strip().splitlines()) == 1 and len(captured.err) < 300
    assert db.stat().st_size == head
