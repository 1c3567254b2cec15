"""A PostgreSQL failure mid-command (a server gone, a connection dropped) is one line, exit 1,
a StorageError naming the run without its password: never an "internal error"."""

from __future__ import annotations

import importlib
from typing import Any

import psycopg
import pytest

SECRET = "s3cr3t-pw-77"


def test_a_lost_server_is_a_storage_error_without_the_password(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def lost(*args: Any, **kwargs: Any) -> Any:
        raise psycopg.OperationalError(
            f"consuming input failed: server closed the connection unexpectedly ({SECRET})"
        )

    # The module, not the `verify` function the store package re-exports under its name.
    verify_module = importlib.import_module("esper_es.store.verify")
    monkeypatch.setattr(verify_module, "open_store", lost)
    result = cli("verify", f"postgresql://me:{SECRET}@db.example/runs?schema=r", "--json")
    assert result.code == 1
    obj = result.json()
    assert obj["error"] == "StorageError"
    assert "postgresql://me@db.example/runs?schema=r" in obj["message"]
    assert "server closed the connection" in obj["message"]
    assert SECRET not in result.out + result.err
