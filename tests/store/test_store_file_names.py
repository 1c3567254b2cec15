"""Any file name opens that file and no other: `#`, `?`, `%` and spaces included (SPEC §9)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from esper_es.errors import NotARunDatabase, TamperDetected
from esper_es.simulate import simulate
from esper_es.store.database import RunDatabase
from esper_es.store.uri import readonly_uri
from esper_es.store.verify import verify

NAMES = ["run#1.db", "run?mode=rw.db", "run%23.db", "a run.db", "ü#?.db"]


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("valid") / "run.db"
    simulate(path, events=60, seed=3)
    return path


@pytest.mark.parametrize("name", NAMES)
def test_a_name_with_uri_characters_opens_itself(valid: Path, tmp_path: Path, name: str) -> None:
    target = tmp_path / name
    shutil.copy(valid, target)
    before = {p.name for p in tmp_path.iterdir()}
    report = verify(target)
    want = verify(valid)
    assert (report.head_seq, report.head_hash) == (want.head_seq, want.head_hash)
    with RunDatabase.open(target, readonly=True) as db:
        assert db.head_seq() == want.head_seq
    # Nothing named after a prefix of the name ("run" for "run#1.db") was created.
    created = {p.name for p in tmp_path.iterdir()} - before
    assert all(p.startswith(name) for p in created), created


def test_a_tampered_file_is_not_hidden_by_a_valid_neighbour(valid: Path, tmp_path: Path) -> None:
    # `run#2.db` is tampered, `run` beside it is valid: verify must read `run#2.db`.
    shutil.copy(valid, tmp_path / "run")
    tampered = tmp_path / "run#2.db"
    tampered.write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    with pytest.raises((TamperDetected, NotARunDatabase)):
        verify(tampered)


def test_the_uri_is_absolute_and_escaped(tmp_path: Path) -> None:
    uri = readonly_uri(tmp_path / "x#y?z.db")
    assert uri.startswith("file:/") and uri.endswith("x%23y%3Fz.db?mode=ro")
