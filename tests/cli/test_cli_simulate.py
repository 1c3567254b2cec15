"""`esper-es simulate`: its report, determinism per seed, and what it refuses."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from esper_es.command_bus import CommandBus
from esper_es.errors import EXIT_OK, EXIT_USAGE
from esper_es.store.verify import verify

EXIT_INTERRUPTED = 130


def _log(path: Path) -> list[tuple[object, ...]]:
    """Every row except `recorded_at` and the hashes, which depend on the wall clock."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = conn.execute(
        "SELECT seq, event_id, run_id, branch, stream, stream_version, type, schema_version,"
        " payload, causation_id, correlation_id FROM events ORDER BY seq"
    ).fetchall()
    conn.close()
    return rows


def test_simulate_json_report(cli, tmp_path: Path) -> None:
    db = tmp_path / "sim.db"
    r = cli("simulate", "--db", db, "--events", 1200, "--seeds", 16, "--seed", 3, "--json")
    assert r.code == EXIT_OK
    obj = r.json()
    assert {
        "run_id", "branch", "head_seq", "fingerprint", "db", "steps", "events", "commands",
        "refused", "stages", "interrupted",
    } <= obj.keys()  # fmt: skip
    assert obj["branch"] == "main"
    assert obj["fingerprint"] is None
    assert obj["db"] == str(db)
    assert obj["interrupted"] is False
    assert obj["events"] == obj["head_seq"] >= 1200
    assert sum(obj["stages"].values()) == 16
    assert 0 < obj["refused"] < obj["commands"]
    report = verify(db)
    assert report.head_seq == obj["head_seq"]
    assert report.run_id == obj["run_id"]
    # head = setup (run + 2 layers) + accepted commands (one event each) + refusals.
    assert obj["head_seq"] == 3 + obj["commands"]


def test_simulate_text_report(cli, tmp_path: Path) -> None:
    r = cli("simulate", "--db", tmp_path / "sim.db", "--events", 300, "--seeds", 8)
    assert r.code == EXIT_OK
    assert r.out.startswith("simulated run sim-")
    assert "seeds: " in r.out


def test_same_seed_gives_the_same_log_and_different_seeds_differ(cli, tmp_path: Path) -> None:
    paths = {}
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        paths[name] = tmp_path / f"{name}.db"
        args = ("simulate", "--db", paths[name], "--events", 1500, "--seed", seed, "--json")
        assert cli(*args).code == EXIT_OK
    a, b, c = (_log(paths[n]) for n in "abc")
    assert len(a) >= 1500
    assert a == b
    assert a != c
    assert a[0][2] != c[0][2]  # the run id is drawn from the seed too
    # Not just other ids: the synthetic controller's choices differ too.
    assert [r[8] for r in a] != [r[8] for r in c]


def test_simulate_refuses_an_existing_file_and_leaves_it_alone(
    cli, tmp_path: Path, sim_db: Path
) -> None:
    before = sim_db.read_bytes()
    r = cli("simulate", "--db", sim_db, "--events", 100, "--json")
    assert r.code == EXIT_USAGE
    obj = r.json()
    assert obj["error"] == "NotARunDatabase"
    assert "already exists" in obj["message"]
    assert sim_db.read_bytes() == before


@pytest.mark.parametrize(
    "args", [("--seeds", "0"), ("--events", "-1"), ("--events", "many"), ("--seed", "1.5")]
)
def test_simulate_bad_numbers_are_usage_errors(cli, tmp_path: Path, args: tuple[str, str]) -> None:
    db = tmp_path / "never.db"
    r = cli("simulate", "--db", db, *args, "--json")
    assert r.code == EXIT_USAGE
    assert r.json()["exit_code"] == EXIT_USAGE
    assert not db.exists()


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[lifecycle]\nmin_trainin_steps = 3\n", "lifecycle.min_trainin_steps"),
        ("[simulate]\nact_probability = 'often'\n", "simulate.act_probability"),
        ("[simulate]\nact_probability = 1.5\n", "simulate.act_probability"),
        ("colour = 'blue'\n", "colour"),
    ],
)
def test_simulate_bad_config_names_the_key_and_writes_nothing(
    cli, tmp_path: Path, toml: str, key: str
) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(toml)
    db = tmp_path / "never.db"
    r = cli("simulate", "--db", db, "--config", cfg, "--json")
    assert r.code == EXIT_USAGE
    obj = r.json()
    assert obj["error"] == "ConfigError"
    assert repr(key) in obj["message"]
    assert not db.exists()


def test_simulate_with_a_config(cli, tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text("[lifecycle]\nembargo_steps = 3\n[simulate]\nseeds_per_layer = 4\n")
    db = tmp_path / "cfg.db"
    obj = cli("simulate", "--db", db, "--config", cfg, "--seeds", 8, "--events", 300, "--json")
    assert obj.code == EXIT_OK
    layers = cli("inspect", db, "--json").json()["layers"]
    assert len(layers) == 2
    start = cli("history", db, "--type", "RunStarted", "--json").json()["events"][0]
    assert start["payload"]["config"]["lifecycle"]["embargo_steps"] == 3


def test_interrupted_simulation_exits_130_and_verifies(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = CommandBus.execute_all
    calls = [0]

    def ctrl_c_at_step_40(self: CommandBus, commands):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 41:  # the setup batch, then steps 1..39 commit
            raise KeyboardInterrupt
        return real(self, commands)

    monkeypatch.setattr(CommandBus, "execute_all", ctrl_c_at_step_40)
    db = tmp_path / "int.db"
    r = cli("simulate", "--db", db, "--events", 100_000, "--json")
    assert r.code == EXIT_INTERRUPTED
    obj = r.json()
    assert obj["interrupted"] is True
    assert obj["steps"] == 40
    monkeypatch.undo()
    report = verify(db)
    assert report.head_seq == obj["head_seq"] > 0
