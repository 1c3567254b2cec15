"""Fixtures of the CLI tests: a simulated run database built once, and in-process CLI runners."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from esper_es.cli.main import main
from esper_es.simulate import simulate

SIM_EVENTS = 3000
SIM_SEED = 7


@attrs.frozen
class CliResult:
    """What one in-process `esper-es` call did."""

    code: int
    out: str
    err: str

    def json(self) -> dict[str, Any]:
        """The single JSON object on stdout; fails the test unless there is exactly one line."""
        lines = self.out.splitlines()
        assert len(lines) == 1, f"expected one line of JSON on stdout, got {self.out!r}"
        obj = json.loads(lines[0])
        assert isinstance(obj, dict)
        return obj


Cli = Callable[..., CliResult]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run `esper-es ARGS...` in this process and capture its exit code and output."""

    def run(*argv: object) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def sim_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed, simulated run database shared by the tests that only read it."""
    path = tmp_path_factory.mktemp("sim") / "run.db"
    simulate(path, events=SIM_EVENTS, seed=SIM_SEED)
    return path


def copy_run(src: Path, dest_dir: Path, name: str = "copy.db") -> Path:
    """Copy a closed run database and its audit trail; return the copy's path."""
    dest = dest_dir / name
    shutil.copyfile(src, dest)
    trail = src.with_name(src.name + ".audit.jsonl")
    if trail.exists():
        shutil.copyfile(trail, dest.with_name(dest.name + ".audit.jsonl"))
    return dest


@pytest.fixture
def db_copy(sim_db: Path, tmp_path: Path) -> Path:
    """A private copy of the simulated database that a test may tamper with."""
    return copy_run(sim_db, tmp_path)
