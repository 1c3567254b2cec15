"""`[library] path` naming a file that is not a kernel library: refused before anything is
written, to it or to the run database (SPEC §9; it used to gain tables and switch to WAL, and
a text file gave a traceback and a 0-event run database)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from esper_es.library.database import LibraryDatabase, NotAKernelLibrary, check_library_file


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _foreign_sqlite(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.execute("INSERT INTO notes VALUES ('mine')")
    conn.commit()
    conn.close()
    return path


def test_an_unrelated_sqlite_file_is_left_untouched(tmp_path: Path) -> None:
    foreign = _foreign_sqlite(tmp_path / "notes.sqlite")
    before = _digest(foreign)
    with pytest.raises(NotAKernelLibrary, match="not an esper-es kernel library") as info:
        LibraryDatabase(foreign)
    assert info.value.exit_code == 2
    assert _digest(foreign) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.sqlite"]  # no -wal, no -shm


@pytest.mark.parametrize("content", [b"just some text\n", b"\x00\x01binary"])
def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "lib.db"
    path.write_bytes(content)
    with pytest.raises(NotAKernelLibrary, match="not an SQLite file"):
        check_library_file(path, create=True)
    assert path.read_bytes() == content


def test_a_new_or_existing_library_opens(tmp_path: Path) -> None:
    path = tmp_path / "lib.db"
    LibraryDatabase(path).close()  # created
    LibraryDatabase(path).close()  # and recognised
    LibraryDatabase(path, readonly=True).close()
    with pytest.raises(NotAKernelLibrary, match="no such file"):
        LibraryDatabase(tmp_path / "missing.db", readonly=True)


def test_train_refuses_before_creating_its_run_database(tmp_path: Path) -> None:
    from esper_es.cli.main import main

    foreign = _foreign_sqlite(tmp_path / "notes.sqlite")
    before = _digest(foreign)
    config = tmp_path / "c.toml"
    config.write_text(f'[library]\npath = "{foreign}"\n[train]\nepochs = 1\n')
    code = main(["train", "--config", str(config), "--db", str(tmp_path / "run.db"), "--json"])
    assert code == 2
    assert not (tmp_path / "run.db").exists()
    assert _digest(foreign) == before
