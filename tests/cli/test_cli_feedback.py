"""Progress: a line per phase off a terminal, on stderr only, and nothing with --json."""

from __future__ import annotations

import io
from pathlib import Path

from esper_es.cli.feedback import Feedback


def test_phase_lines_off_a_terminal() -> None:
    out = io.StringIO()
    fb = Feedback("train", stream=out)
    with fb.phase("importing torch"):
        pass
    fb.note("epoch 1/3")
    assert out.getvalue().splitlines() == [
        "esper-es train: importing torch …",
        "esper-es train: epoch 1/3",
    ]


def test_disabled_feedback_is_silent() -> None:
    out = io.StringIO()
    fb = Feedback("train", enabled=False, stream=out)
    with fb.phase("importing torch"):
        fb.note("x")
    fb.counter("events", 10)(10)
    assert out.getvalue() == ""


def test_counter_reports_each_tenth_and_the_end() -> None:
    out = io.StringIO()
    count = Feedback("simulate", stream=out).counter("events", 100)
    for done in range(0, 101, 5):
        count(done)
    lines = out.getvalue().splitlines()
    assert lines[0] == "esper-es simulate: events 10/100"
    assert lines[-1] == "esper-es simulate: events 100/100"
    assert len(lines) == 10


def test_simulate_says_what_it_does_off_a_terminal(cli, tmp_path: Path) -> None:
    r = cli("simulate", "--db", tmp_path / "s.db", "--events", 400)
    assert r.code == 0
    lines = r.err.splitlines()
    assert lines[0].startswith("esper-es simulate: writing 400 events")
    assert "esper-es simulate: events 400/400" in lines
    # stdout is the answer only.
    assert "esper-es simulate:" not in r.out
    quiet = cli("simulate", "--db", tmp_path / "q.db", "--events", 400, "--json")
    assert quiet.err == ""


def test_train_says_what_it_does_and_each_epoch(cli, tmp_path: Path) -> None:
    r = cli("train", "--db", tmp_path / "t.db", "--epochs", 2)
    assert r.code == 0, r.err
    lines = r.err.splitlines()
    assert lines[0] == "esper-es train: importing torch and the trainer …"
    assert any(line.startswith("esper-es train: preparing the digits task") for line in lines)
    epochs = [line for line in lines if line.startswith("esper-es train: epoch ")]
    assert [e.split("(")[0].strip() for e in epochs] == [
        "esper-es train: epoch 1/2",
        "esper-es train: epoch 2/2",
    ]
