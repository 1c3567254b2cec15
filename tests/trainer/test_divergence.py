"""A diverging run (non-finite loss) stops cleanly at a boundary (SPEC §9): one error line and
exit 1, a log that ends with `TrainingStopped(diverged)` and verifies, replays to its last
checkpoint, and a resume that says why it will not continue. It used to end with exit 1 and
"Out of range float values are not JSON compliant", leaving a partial database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esper_es.cli.main import main
from esper_es.store.database import RunDatabase

CONFIG = """
[train]
epochs = 2
lr = 1e30
seed_lr = 1e30
[host]
max_train_examples = 128
max_val_examples = 64
"""


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object], str]:
    capsys.readouterr()
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, json.loads(captured.out.strip().splitlines()[-1]), captured.err


def test_a_diverging_run_stops_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "lr.toml"
    config.write_text(CONFIG)
    db = tmp_path / "run.db"
    code, obj, err = _cli(capsys, "train", "--config", str(config), "--db", str(db))
    assert code == 1 and obj["error"] == "TrainingDiverged"
    assert "training loss nan" in str(obj["message"]) and len(err.strip().splitlines()) == 1
    with RunDatabase.open(db, readonly=True) as rdb:
        events = list(rdb.read())
    assert (events[-1].type, events[-1].payload["reason"]) == ("TrainingStopped", "diverged")
    assert events[-2].type == "Checkpointed" and events[-2].payload["snapshot"] is None
    assert _cli(capsys, "verify", str(db))[0] == 0
    code, replayed, _ = _cli(capsys, "replay", str(db))
    assert code == 0 and replayed["fingerprint"] == events[-2].payload["fingerprint"]
    head = events[-1].seq
    code, refused, _ = _cli(capsys, "resume", str(db))
    assert code == 2 and "diverged at step" in str(refused["message"])
    with RunDatabase.open(db, readonly=True) as rdb:
        assert rdb.head_seq() == head  # the refused resume appended nothing
