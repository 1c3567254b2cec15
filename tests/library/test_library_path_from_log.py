"""A path read from a log is never written to unless the user names it again (SPEC §9): a
resumed run used to open, create or modify the `[library] path` its (possibly crafted) log
recorded."""

from __future__ import annotations

import hashlib
from pathlib import Path

import attrs
import pytest

from esper_es.cli.main import main
from esper_es.config import load_config
from esper_es.library.database import LibraryDatabase
from esper_es.trainer import Trainer, built_in_trainer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _stopped_run(tmp_path: Path, library: Path) -> Path:
    config = load_config(FIXTURES / "quick_run.toml")
    config = attrs.evolve(config, library=attrs.evolve(config.library, path=str(library)))

    def stop(trainer: Trainer, step: int) -> None:
        if step == 6:
            raise KeyboardInterrupt

    db = tmp_path / "run.db"
    assert built_in_trainer(config, seed=0, db_path=db, on_step=stop).run().interrupted
    return db


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_resume_does_not_create_the_recorded_library(tmp_path: Path) -> None:
    library = tmp_path / "shared" / "lib.db"
    library.parent.mkdir()
    db = _stopped_run(tmp_path, library)
    for leftover in library.parent.iterdir():
        leftover.unlink()
    assert main(["resume", str(db), "--json"]) == 0
    assert list(library.parent.iterdir()) == []


def test_resume_leaves_the_recorded_library_untouched(tmp_path: Path) -> None:
    library = tmp_path / "lib.db"
    db = _stopped_run(tmp_path, library)
    before = _digest(library)
    assert main(["resume", str(db), "--json"]) == 0
    assert _digest(library) == before


def test_resume_writes_the_library_the_user_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _stopped_run(tmp_path, tmp_path / "recorded.db")
    named = tmp_path / "named.db"
    assert main(["resume", str(db), "--library", str(named), "--json"]) == 0
    LibraryDatabase(named, readonly=True).close()  # created, and a kernel library
    text = tmp_path / "notes.txt"
    text.write_text("mine")
    assert main(["resume", str(db), "--library", str(text), "--json"]) == 2
    assert text.read_text() == "mine"
