"""`rollback --to-epoch N`: the boundary where epoch N ended, whatever the run's seqs are."""

from __future__ import annotations

import json
from pathlib import Path

from esper_es.cli.main import main


def _run(capsys, *argv: object) -> tuple[int, dict]:
    code = main([str(a) for a in argv] + ["--json"])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_to_epoch_is_the_end_of_that_epochs_boundary(corpus_copy, capsys) -> None:
    db: Path = corpus_copy("digits")
    code, history = _run(capsys, "history", db, "--type", "EpochCompleted")
    assert code == 0
    epoch1 = next(e for e in history["events"] if e["payload"]["epoch"] == 1)
    code, obj = _run(capsys, "rollback", db, "--to-epoch", 1)
    assert code == 0, obj
    assert obj["step"] == epoch1["payload"]["step"]
    # The branch starts after every event of that boundary: none of its seqs is later.
    code, main_events = _run(capsys, "history", db, "--branch", "main")
    same_step = [e["seq"] for e in main_events["events"] if e["step"] == obj["step"]]
    assert obj["to_seq"] == max(same_step)


def test_to_epoch_that_did_not_end_is_refused_naming_those_that_did(corpus_copy, capsys) -> None:
    db = corpus_copy("digits")
    code, obj = _run(capsys, "rollback", db, "--to-epoch", 99)
    assert code == 2
    assert "epoch 99 did not end" in obj["message"] and "1, 2" in obj["message"]
    code, obj = _run(capsys, "rollback", db)
    assert code == 2 and "--to-epoch" in obj["message"]
