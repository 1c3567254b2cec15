"""`esper-es runs [DIR]`: every run database in a folder, described from its own log."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from esper_es.errors import EXIT_OK, EXIT_USAGE

CORPUS = Path(__file__).resolve().parents[2] / "replay"


def _folder(tmp_path: Path, sim_db: Path) -> Path:
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copy(CORPUS / "digits" / "run.db", runs / "digits.db")
    shutil.copy(CORPUS / "text" / "run.db", runs / "text.db")
    shutil.copy(sim_db, runs / "sim.db")
    (runs / "notes.db").write_text("not a database")
    (runs / "readme.txt").write_text("ignored: not a database suffix")
    return runs


def test_runs_describes_each_run_from_its_log(cli, tmp_path: Path, sim_db: Path) -> None:
    folder = _folder(tmp_path, sim_db)
    r = cli("runs", folder, "--json")
    assert r.code == EXIT_OK, r.err
    obj = r.json()
    by_file = {Path(run["path"]).name: run for run in obj["runs"]}
    assert set(by_file) == {"digits.db", "text.db", "sim.db"}
    assert [Path(s["path"]).name for s in obj["skipped"]] == ["notes.db"]
    digits = by_file["digits.db"]
    expected = json.loads((CORPUS / "digits" / "expected.json").read_text())
    assert digits["fingerprint"] == expected["branches"]["main"]["fingerprint"]
    assert digits["status"] == "completed"
    assert digits["epochs"] == digits["epochs_planned"] > 0
    assert 0.5 < digits["val_accuracy"] <= 1.0
    assert digits["host"].startswith("digits")
    assert by_file["text.db"]["host"].startswith("text")
    assert by_file["sim.db"]["status"] == "simulated"
    assert by_file["sim.db"]["fingerprint"] is None
    # Newest first.
    started = [run["started"] for run in obj["runs"]]
    assert started == sorted(started, reverse=True)


def test_runs_table_has_a_header_and_a_line_per_run(cli, tmp_path: Path, sim_db: Path) -> None:
    folder = _folder(tmp_path, sim_db)
    r = cli("runs", folder)
    assert r.code == EXIT_OK
    lines = r.out.splitlines()
    assert lines[0].split()[:3] == ["RUN", "STARTED", "HOST"]
    assert len(lines) == 1 + 3 + 1
    assert lines[-1] == f"-- 3 runs in {folder}; 1 other database file(s) skipped"
    assert any("digits.db" in line and "completed" in line for line in lines)


def test_runs_of_a_missing_folder_is_a_usage_error(cli, tmp_path: Path) -> None:
    r = cli("runs", tmp_path / "nope", "--json")
    assert r.code == EXIT_USAGE
    assert "not a folder" in r.json()["message"]


def test_runs_of_an_empty_folder(cli, tmp_path: Path) -> None:
    r = cli("runs", tmp_path)
    assert r.code == EXIT_OK
    assert r.out == f"-- 0 runs in {tmp_path}\n"
