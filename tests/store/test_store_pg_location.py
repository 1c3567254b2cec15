"""`postgresql://` locations: the schema parameter is ours, the password is never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from esper_es.errors import NotARunDatabase
from esper_es.store.backends import is_postgres
from esper_es.store.pg_location import PgLocation, describe


def test_the_schema_is_split_off_and_the_rest_reaches_libpq() -> None:
    loc = PgLocation.parse("postgresql://me:pw@db.example:5433/runs?sslmode=require&schema=r1")
    assert loc.schema == "r1"
    assert loc.conninfo == "postgresql://me:pw@db.example:5433/runs?sslmode=require"
    assert loc.redacted == "postgresql://me@db.example:5433/runs?sslmode=require&schema=r1"


def test_a_socket_url_keeps_its_empty_host() -> None:
    loc = PgLocation.parse("postgresql:///postgres?host=/tmp/s&port=5&user=u&schema=x")
    assert loc.conninfo == "postgresql:///postgres?host=/tmp/s&port=5&user=u"
    assert loc.with_schema("y").redacted.endswith("user=u&schema=y")


def test_no_password_is_ever_shown() -> None:
    for url in (
        "postgresql://me:hunter2@h/db?schema=a",
        "postgresql://me@h/db?password=hunter2&schema=a",
        "postgres://me:hunter2@h/db",
    ):
        loc = PgLocation.parse(url)
        assert "hunter2" not in loc.redacted and "hunter2" not in describe(url)
        assert "hunter2" not in repr(loc)
        assert loc.scrub("failed for hunter2") == "failed for ***"


def test_paths_are_not_urls() -> None:
    assert is_postgres("postgresql://h/db") and is_postgres("postgres://h/db")
    assert not is_postgres("runs/postgresql:x.db") and describe("runs/a.db") == "runs/a.db"


@pytest.mark.parametrize("name", ["", "pg_catalog", "x" * 64, "information_schema"])
def test_unusable_schema_names_are_refused(name: str) -> None:
    with pytest.raises(NotARunDatabase):
        PgLocation.parse(f"postgresql://h/db?schema={name}")


@pytest.mark.parametrize(
    "typo", ["postgresql:/db?schema=a", "postgres:me:pw@host/db", "POSTGRESQL:///x"]
)
def test_a_url_missing_a_slash_is_refused_not_made_a_file(
    typo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from esper_es.store.backends import create_store, open_store

    monkeypatch.chdir(tmp_path)
    for call in (lambda: create_store(typo, "r"), lambda: open_store(typo)):
        with pytest.raises(NotARunDatabase, match="two slashes") as info:
            call()
        assert "pw" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
