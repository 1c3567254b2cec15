"""`esper-es history`: the audit timeline, filtered by stream and type, with causes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from esper_es.command_bus import CommandBus
from esper_es.core import commands as c
from esper_es.core import events as ev
from esper_es.errors import EXIT_OK, EXIT_USAGE
from esper_es.store.database import RunDatabase

GERMINATE_ID = "cmd-germinate-0001"
TRAIN_ID = "cmd-train-0002"
REFUSED_ID = "cmd-graft-too-early-0003"
DECISION_ID = "decision-42"


@pytest.fixture
def small_run(tmp_path: Path) -> Path:
    """A hand-driven run: a layer, one germination, one training start, one refused command."""
    path = tmp_path / "small.db"
    with RunDatabase.create(path, "run-small") as db:
        bus = CommandBus(db)
        bus.execute_all(
            [
                c.StartRun(command_id="cmd-start", run_id="run-small", master_seed=1),
                c.RegisterSeedLayer(
                    command_id="cmd-layer",
                    layer="layer1",
                    shape_kind="image",
                    channels=4,
                    num_seeds=2,
                    blueprints=("conv3x3", "norm"),
                ),
            ]
        )
        bus.execute(
            c.GerminateSeed(
                command_id=GERMINATE_ID,
                correlation_id=DECISION_ID,
                seed="layer1/0",
                step=3,
                blueprint="conv3x3",
                kernel_id="k-test",
                init_seed=5,
            )
        )
        bus.execute(c.StartTraining(command_id=TRAIN_ID, seed="layer1/0", step=4))
        # Two steps in TRAINING, the gate needs 20: refused and recorded, never forced.
        outcome = bus.execute(
            c.StartGrafting(command_id=REFUSED_ID, seed="layer1/0", step=6, improvement=0.5)
        )
        assert not outcome.accepted
    return path


def test_history_json_shape(cli, small_run: Path) -> None:
    obj = cli("history", small_run, "--json").json()
    assert {"run_id", "branch", "head_seq", "fingerprint", "events", "branches"} <= obj.keys()
    assert obj["run_id"] == "run-small"
    assert obj["branch"] == "main"
    assert obj["head_seq"] == len(obj["events"]) == 5
    assert obj["branches"] == [{"name": "main", "parent": None, "fork_seq": 0}]
    assert [e["seq"] for e in obj["events"]] == list(range(1, 6))
    for e in obj["events"]:
        assert {"seq", "stream", "stream_version", "type", "payload", "causation_id"} <= e.keys()
    assert [e["type"] for e in obj["events"]] == [
        "RunStarted",
        "SeedLayerRegistered",
        "SeedGerminated",
        "SeedTrainingStarted",
        "CommandRefused",
    ]


def test_history_germination_is_caused_by_its_command(cli, small_run: Path) -> None:
    obj = cli("history", small_run, "--type", "SeedGerminated", "--json").json()
    (germ,) = obj["events"]
    assert germ["causation_id"] == GERMINATE_ID
    assert germ["correlation_id"] == DECISION_ID
    assert germ["event_id"] == f"{GERMINATE_ID}/0"
    assert germ["stream"] == "seed:layer1/0"
    assert germ["payload"]["blueprint"] == "conv3x3"
    assert germ["step"] == 3


def test_history_records_refusals_on_the_controller_stream(cli, small_run: Path) -> None:
    obj = cli("history", small_run, "--type", "CommandRefused", "--json").json()
    (refused,) = obj["events"]
    assert refused["stream"] == "controller"
    assert refused["causation_id"] == REFUSED_ID
    p = refused["payload"]
    assert p["command"] == "StartGrafting"
    assert p["trigger"] == "start_grafting"
    assert p["stage"] == "TRAINING"
    assert p["seed"] == "layer1/0"
    assert "gate needs 20" in p["reason"]
    # The refused command appended nothing to the seed's own stream (L1).
    seed = cli("history", small_run, "--stream", "seed:layer1/0", "--json").json()
    assert [e["type"] for e in seed["events"]] == ["SeedGerminated", "SeedTrainingStarted"]
    assert [e["causation_id"] for e in seed["events"]] == [GERMINATE_ID, TRAIN_ID]


def test_history_text_shows_cause_and_refusal_reason(cli, small_run: Path, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    r = cli("history", small_run)
    assert r.code == EXIT_OK
    lines = r.out.splitlines()
    germ = next(line for line in lines if "SeedGerminated" in line)
    assert f"← {GERMINATE_ID}" in germ
    assert f"[{DECISION_ID}]" in germ
    refused = next(line for line in lines if "CommandRefused" in line)
    assert "reason=" in refused
    assert lines[-1] == "-- 5 events on branch main"


def test_history_stream_filter_gives_one_gap_free_stream(cli, sim_db: Path) -> None:
    obj = cli("history", sim_db, "--stream", "seed:sim0/3", "--json").json()
    events = obj["events"]
    assert events
    assert {e["stream"] for e in events} == {"seed:sim0/3"}
    assert [e["stream_version"] for e in events] == list(range(1, len(events) + 1))
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    # head_seq is the run's head, not the filtered stream's.
    assert obj["head_seq"] > seqs[-1]


def test_history_type_filter_matches_the_table(cli, sim_db: Path) -> None:
    obj = cli("history", sim_db, "--type", "SeedGerminated", "--json").json()
    conn = sqlite3.connect(f"file:{sim_db}?mode=ro", uri=True)
    (want,) = conn.execute("SELECT COUNT(*) FROM events WHERE type='SeedGerminated'").fetchone()
    conn.close()
    assert len(obj["events"]) == want > 0
    assert {e["type"] for e in obj["events"]} == {"SeedGerminated"}
    for e in obj["events"]:
        assert e["causation_id"]
        assert e["event_id"] == f"{e['causation_id']}/0"


def test_history_limit(cli, sim_db: Path) -> None:
    obj = cli("history", sim_db, "--limit", "5", "--json").json()
    assert [e["seq"] for e in obj["events"]] == [1, 2, 3, 4, 5]


def test_history_of_an_unknown_stream_lists_the_streams(cli, sim_db: Path) -> None:
    r = cli("history", sim_db, "--stream", "sim0/3", "--json")
    assert r.code == EXIT_USAGE
    obj = r.json()
    assert obj["error"] == "UnknownFilter"
    assert "did you mean seed:sim0/3?" in obj["message"]
    assert "run" in obj["message"]


def test_history_of_an_unknown_type_lists_every_type(cli, sim_db: Path) -> None:
    from esper_es.core.events import EVENT_TYPES

    r = cli("history", sim_db, "--type", "NoSuchEvent")
    assert r.code == EXIT_USAGE
    assert r.out == ""
    for name in EVENT_TYPES:
        assert name in r.err
    near = cli("history", sim_db, "--type", "seedgerminated")
    assert near.code == EXIT_USAGE
    assert "did you mean SeedGerminated?" in near.err


def test_history_type_repeats(cli, sim_db: Path) -> None:
    both = cli(
        "history", sim_db, "--type", "SeedGerminated", "--type", "SeedCulled", "--json"
    ).json()["events"]
    assert {e["type"] for e in both} == {"SeedGerminated", "SeedCulled"}
    one = cli("history", sim_db, "--type", "SeedCulled", "--json").json()["events"]
    assert 0 < len(one) < len(both)


def test_history_tail_is_the_last_events(cli, sim_db: Path) -> None:
    obj = cli("history", sim_db, "--tail", "3", "--json").json()
    assert [e["seq"] for e in obj["events"]] == [
        obj["head_seq"] - 2,
        obj["head_seq"] - 1,
        obj["head_seq"],
    ]
    assert cli("history", sim_db, "--tail", "3", "--limit", "2").code == EXIT_USAGE


def test_history_table_has_a_header_and_fits_the_width(cli, sim_db: Path, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    lines = cli("history", sim_db, "--limit", "40").out.splitlines()
    assert lines[0].split() == ["SEQ", "STEP", "STREAM", "TYPE", "DETAILS"]
    assert max(len(line) for line in lines) <= 100
    assert lines[-1] == "-- 40 events on branch main"
    assert (
        cli("history", sim_db, "--limit", "1")
        .out.splitlines()[-1]
        .endswith("-- 1 event on branch main")
    )


def test_history_full_keeps_every_character(cli, small_run: Path, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    full = cli("history", small_run, "--type", "CommandRefused", "--full").out
    reason = cli("history", small_run, "--type", "CommandRefused", "--json").json()["events"][0][
        "payload"
    ]["reason"]
    # Wrapped, not cut: the words of the reason all arrive.
    assert "".join(reason.split()) in "".join(full.split())


def test_history_csv_and_json_lines(cli, small_run: Path) -> None:
    import csv
    import io
    import json

    rows = list(csv.DictReader(io.StringIO(cli("history", small_run, "--format", "csv").out)))
    assert [int(r["seq"]) for r in rows] == [1, 2, 3, 4, 5]
    assert json.loads(rows[2]["payload"])["blueprint"] == "conv3x3"
    lines = cli("history", small_run, "--format", "json").out.splitlines()
    assert [json.loads(line)["type"] for line in lines][:3] == [
        "RunStarted",
        "SeedLayerRegistered",
        "SeedGerminated",
    ]


def test_history_follow_of_a_finished_run_returns(cli, small_run: Path) -> None:
    # A run whose branch has no TrainingStopped is live: following it would wait, so this
    # checks the other half: a stopped run prints and returns at once.
    with RunDatabase.open(small_run) as db:
        stop = ev.TrainingStopped(epoch=1, step=7, reason="completed")
        CommandBus(db).execute(c.RecordFact(command_id="cmd-stop", step=7, event=stop))
    r = cli("history", small_run, "--follow", "--tail", "1")
    assert r.code == EXIT_OK
    assert "TrainingStopped" in r.out
    assert cli("history", small_run, "--follow", "--json").code == EXIT_USAGE


def test_history_unknown_branch_is_an_error(cli, sim_db: Path) -> None:
    r = cli("history", sim_db, "--branch", "nope", "--json")
    assert r.code == EXIT_USAGE
    obj = r.json()
    assert "nope" in obj["message"]
    assert "main" in obj["message"]


def test_history_of_a_missing_database(cli, tmp_path: Path) -> None:
    r = cli("history", tmp_path / "missing.db", "--json")
    assert r.code == EXIT_USAGE
    assert r.json()["error"] == "NotARunDatabase"


def test_follow_prints_events_as_they_are_committed_until_the_run_stops(
    small_run: Path, monkeypatch
) -> None:
    from esper_es.cli import history

    written: list[list[str]] = []
    later: list[c.Command] = [
        c.StartTraining(command_id="cmd-train-1", seed="layer1/1", step=8),
        c.RecordFact(
            command_id="cmd-stop",
            step=9,
            event=ev.TrainingStopped(epoch=1, step=9, reason="completed"),
        ),
    ]
    polls = []

    def tick(_seconds: float) -> None:
        # Each poll, a writer commits one more boundary (here: the same thread, in order).
        polls.append(1)
        if len(polls) == 2:  # one poll sees nothing new
            return
        with RunDatabase.open(small_run) as writer:
            CommandBus(writer).execute(later.pop(0))

    monkeypatch.setattr(history.time, "sleep", tick)
    with RunDatabase.open(small_run, readonly=True) as db:
        n = history.follow(
            db,
            lambda rows: written.append([r["type"] for r in rows]) or len(rows),
            branch="main",
            after_seq=db.head_seq("main"),
            stream=None,
            types=["TrainingStopped", "CommandRefused"],
            ended=False,
        )
    assert later == []
    assert len(polls) == 3
    # Slot 1 is dormant, so its training start was refused: that refusal passes the filter,
    # the empty poll writes nothing, and the stop is shown and ends the follow.
    assert written == [["CommandRefused"], ["TrainingStopped"]]
    assert n == 2
