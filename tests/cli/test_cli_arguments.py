"""Numbers on the command line are checked where they are parsed: one line, exit 2, no
traceback, nothing written (SPEC §9) — out-of-range seqs used to raise OverflowError deep in
SQLite, and negative ones gave exit 0 with empty output."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Cli

HUGE = str(10**30)


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect", "{db}", "--at", "-1"],
        ["inspect", "{db}", "--at", HUGE],
        ["history", "{db}", "--limit", "-1"],
        ["history", "{db}", "--limit", "0"],
        ["replay", "{db}", "--to", HUGE],
        ["rollback", "{db}", "--to", "-3"],
        ["resume", "{db}", "--epochs", "0"],
        ["train", "--seed", "-5", "--db", "{tmp}/x.db"],
        ["train", "--epochs", "two", "--db", "{tmp}/x.db"],
        ["simulate", "--db", "{tmp}/y.db", "--events", "-3"],
        ["check-lifecycle", "--examples", "0"],
    ],
)
def test_bad_numbers_are_usage_errors(
    cli: Cli, sim_db: Path, tmp_path: Path, argv: list[str]
) -> None:
    args = [a.format(db=sim_db, tmp=tmp_path) for a in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli(*args, "--json")
    assert result.code == 2
    obj = result.json()
    assert obj["exit_code"] == 2
    # The message names the option and the rule it broke.
    assert any(f"Invalid value for '{a}'" in obj["message"] for a in argv if a.startswith("--"))
    assert "must be between" in obj["message"] or "whole number" in obj["message"]
    assert "Traceback" not in result.err
    assert result.err.strip().splitlines()[-1].startswith("esper-es: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_seq_zero_and_large_valid_limits_still_work(cli: Cli, sim_db: Path) -> None:
    assert cli("inspect", sim_db, "--at", "0", "--json").json()["at_seq"] == 0
    assert cli("history", sim_db, "--limit", "3", "--json").code == 0
