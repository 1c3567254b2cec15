"""The command line on PostgreSQL (SPEC §11): `--db postgresql://…` for every command that
takes a run, and `copy` between backends with the chain intact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from esper_es.store.backends import open_store

#: The `cli` fixture of tests/cli/conftest.py: `cli(*argv)` -> CliResult.
Cli = Callable[..., Any]

SECRET = "s3cr3t-pw-9f2c"


def test_train_then_replay_verify_history_inspect_report_on_postgres(
    cli: Cli, pg_url: str, tmp_path: Path
) -> None:
    trained = cli("train", "--epochs", "1", "--db", pg_url, "--json")
    assert trained.code == 0, trained.err
    run = trained.json()
    assert run["db"] == pg_url and run["head_seq"] > 0
    verified = cli("verify", pg_url, "--json").json()
    assert verified["ok"] and verified["head_seq"] == run["head_seq"]
    assert verified["audit_lines"] == run["head_seq"]  # its audit table: a line per event
    replayed = cli("replay", pg_url, "--json")
    assert replayed.code == 0, replayed.err
    assert replayed.json()["fingerprint"] == run["fingerprint"]
    history = cli("history", pg_url, "--json")
    assert history.code == 0 and '"RunStarted"' in history.out
    inspected = cli("inspect", pg_url, "--json")
    assert inspected.code == 0 and inspected.json()["run_id"] == run["run_id"]
    report = cli("report", pg_url, "-o", tmp_path / "report", "--json")
    assert report.code == 0, report.err
    assert (tmp_path / "report" / "index.html").exists()
    # The trained run goes to SQLite and back to PostgreSQL with the same head.
    back = pg_url.replace("schema=", "schema=back_")
    there = cli("copy", pg_url, tmp_path / "trained.db", "--json").json()
    again = cli("copy", tmp_path / "trained.db", back, "--json").json()
    assert there["head_hash"] == again["head_hash"] == verified["head_hash"]
    assert cli("replay", back, "--json").json()["fingerprint"] == run["fingerprint"]


def test_rollback_and_resume_on_postgres(cli: Cli, pg_url: str) -> None:
    assert cli("train", "--epochs", "2", "--db", pg_url, "--json").code == 0
    with open_store(pg_url, readonly=True) as db:
        boundary = max(r.seq for r in db.read(types=["Checkpointed"]) if r.payload["epoch"] == 1)
    rolled = cli("rollback", pg_url, "--to", boundary, "--json")
    assert rolled.code == 0, rolled.err
    resumed = cli("resume", pg_url, "--json")
    assert resumed.code == 0, resumed.err
    assert cli("verify", pg_url, "--json").json()["branches"] == ["b1", "main"]


def test_copy_round_trips_sqlite_postgres_sqlite_to_the_same_head(
    cli: Cli, sim_db: Path, pg_url: str, tmp_path: Path
) -> None:
    key = tmp_path / "k.pem"
    assert cli("keygen", "--out", key).code == 0
    source = tmp_path / "src.db"
    assert cli("copy", sim_db, source).code == 0
    assert cli("sign", source, "--key", key).code == 0
    head = cli("verify", source, "--json").json()["head_hash"]
    to_pg = cli("copy", source, pg_url, "--json")
    assert to_pg.code == 0, to_pg.err
    assert to_pg.json()["side_rows"]["signatures"] == 1
    resigned = cli("sign", pg_url, "--key", key, "--json")  # signing on PostgreSQL itself
    assert resigned.code == 0, resigned.err
    back = tmp_path / "back.db"
    assert cli("copy", pg_url, back).code == 0
    for where in (pg_url, back):
        checked = cli("verify", where, "--key", f"{key}.pub", "--json")
        assert checked.code == 0, checked.err
        assert checked.json()["head_hash"] == head
    # Never over an existing run, on either backend (exit 2); the destination is untouched.
    assert cli("copy", back, pg_url).code == 2
    refused = cli("copy", pg_url, back, "--json")
    assert refused.code == 2 and refused.json()["error"] == "DestinationExists"
    assert cli("verify", back, "--json").json()["head_hash"] == head


def test_a_tampered_source_is_not_copied(cli: Cli, db_copy: Path, pg_url: str) -> None:
    import sqlite3

    conn = sqlite3.connect(db_copy, isolation_level=None)
    conn.execute("DROP TRIGGER events_append_only_update")
    conn.execute("UPDATE events SET payload = replace(payload, '1', '2') WHERE seq = 5")
    conn.close()
    assert cli("copy", db_copy, pg_url).code == 3
    assert cli("verify", pg_url).code == 2  # nothing was created


def test_a_second_writer_is_refused_with_exit_5(cli: Cli, pg_url: str) -> None:
    assert cli("simulate", "--db", pg_url, "--events", 50).code == 0
    with open_store(pg_url):
        locked = cli("resume", pg_url, "--json")
        assert locked.code == 5 and locked.json()["error"] == "DatabaseLocked"


def test_no_password_reaches_output_or_errors(cli: Cli, pg_url: str) -> None:
    if not pg_url.startswith("postgresql:///"):
        pytest.skip("the test server's URL names a host; cannot add a password to it here")
    with_secret = pg_url.replace("postgresql:///", f"postgresql://esper:{SECRET}@/", 1)
    results = [
        cli("simulate", "--db", with_secret, "--events", 50, "--json"),
        cli("verify", with_secret),
        cli("verify", with_secret, "--json"),
        cli("simulate", "--db", with_secret, "--events", 5),  # refused: the run exists
        cli("verify", with_secret.replace("schema=", "schema=missing_")),
        cli("verify", with_secret.replace("port=", "port=1")),  # no server there
    ]
    assert [r.code for r in results[:3]] == [0, 0, 0]
    assert all(r.code != 0 for r in results[3:])
    for r in results:
        assert SECRET not in r.out + r.err
    assert results[0].json()["db"] == pg_url.replace("postgresql:///", "postgresql://esper@/")


def test_runs_lists_every_run_of_a_postgres_database(cli: Cli, sim_db: Path) -> None:
    from pg_support import fresh_database

    database = fresh_database()
    for schema in ("first", "second"):
        assert cli("copy", sim_db, f"{database}&schema={schema}").code == 0
    other = psycopg_connect(database)
    other.execute("CREATE SCHEMA notes")
    other.execute("CREATE TABLE notes.events (x int)")  # not a run: no meta table
    other.execute("CREATE SCHEMA broken")
    other.execute("CREATE TABLE broken.events (x int)")
    other.execute("CREATE TABLE broken.meta (key text, value text)")  # looks like one, is not
    other.close()
    listed = cli("runs", database, "--json")
    assert listed.code == 0, listed.err
    obj = listed.json()
    assert sorted(r["path"].rpartition("schema=")[2] for r in obj["runs"]) == ["first", "second"]
    assert [s["path"].rpartition("schema=")[2] for s in obj["skipped"]] == ["broken"]
    for run in obj["runs"]:
        assert run["backend"] == "postgresql" and run["bytes"] > 0
        assert run["head_seq"] > 0 and run["status"] == "simulated"
    table = cli("runs", database)
    assert table.code == 0 and "schema=first" in table.out and "-- 2 runs in" in table.out
    one = cli("runs", f"{database}&schema=second", "--json").json()
    assert [r["path"].rpartition("schema=")[2] for r in one["runs"]] == ["second"]


def psycopg_connect(url: str) -> Any:
    """An autocommit connection to the database `url` names."""
    import psycopg

    from esper_es.store.pg_location import PgLocation

    return psycopg.connect(PgLocation.parse(url).conninfo, autocommit=True)
