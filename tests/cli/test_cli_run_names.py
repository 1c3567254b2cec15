"""`train` without --db names its run readably (local time + config) and never reuses a file."""

from __future__ import annotations

import re
from pathlib import Path

from esper_es.cli.running import _readable_run_path


def test_readable_names_carry_time_and_config(tmp_path: Path) -> None:
    path = _readable_run_path("configs/text.toml", tmp_path)
    assert re.fullmatch(r"\d{8}-\d{6}-text\.db", path.name)
    assert _readable_run_path(None, tmp_path).name.endswith("-digits.db")


def test_an_existing_name_gets_a_counter(tmp_path: Path, monkeypatch) -> None:
    import time

    monkeypatch.setattr(time, "strftime", lambda fmt: "20261129-051427")
    first = _readable_run_path(None, tmp_path)
    first.write_text("x")
    second = _readable_run_path(None, tmp_path)
    second.write_text("x")
    assert [first.name, second.name, _readable_run_path(None, tmp_path).name] == [
        "20261129-051427-digits.db",
        "20261129-051427-digits-2.db",
        "20261129-051427-digits-3.db",
    ]


def test_train_without_db_writes_a_readable_name(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = cli("train", "--epochs", 1, "--json")
    assert r.code == 0, r.err
    db = Path(r.json()["db"])
    assert db.parent == Path("runs")
    assert re.fullmatch(r"\d{8}-\d{6}-digits\.db", db.name)
    assert (tmp_path / db).is_file() and (tmp_path / db.with_suffix(".pt")).is_file()


def test_force_replaces_an_existing_run_and_only_a_run(cli, tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    first = cli("train", "--db", db, "--epochs", 1, "--json").json()
    again = cli("train", "--db", db, "--epochs", 1, "--json")
    assert again.code == 2 and "already exists" in again.json()["message"]
    forced = cli("train", "--db", db, "--epochs", 1, "--force", "--json")
    assert forced.code == 0, forced.err
    assert forced.json()["run_id"] != first["run_id"]
    assert cli("verify", db).code == 0
    other = tmp_path / "notes.db"
    other.write_text("my notes")
    refused = cli("train", "--db", other, "--epochs", 1, "--force", "--json")
    assert refused.code == 2
    assert other.read_text() == "my notes"
