"""Which backend a location names: an SQLite file path, or a `postgresql://` URL (SPEC §11).

Every command that takes a run database goes through `open_store` / `create_store`; the
PostgreSQL module (and psycopg) is imported only when a URL asks for it.
"""

from __future__ import annotations

import os

from esper_es.store.pg_location import describe, is_postgres, refuse_mistyped_url
from esper_es.store.protocol import RunStore

__all__ = ["create_store", "describe", "is_postgres", "open_store", "run_locations"]


def run_locations(database: str) -> list[str]:
    """The runs of a PostgreSQL database (`postgresql://…`), one openable location each."""
    refuse_mistyped_url(database)
    from esper_es.store.pg_session import run_locations as pg_runs

    return pg_runs(database)


def open_store(
    location: str | os.PathLike[str], *, readonly: bool = False, audit: bool = True
) -> RunStore:
    """Open an existing run: for writing (one writer at a time) or read-only."""
    refuse_mistyped_url(location)
    if is_postgres(location):
        from esper_es.store.postgres import PostgresStore

        return PostgresStore.open(str(location), readonly=readonly, audit=audit)
    from esper_es.store.database import RunDatabase

    return RunDatabase.open(location, readonly=readonly, audit=audit)


def create_store(location: str | os.PathLike[str], run_id: str, *, audit: bool = True) -> RunStore:
    """Create a new, empty run at `location` and open it for writing."""
    refuse_mistyped_url(location)
    if is_postgres(location):
        from esper_es.store.postgres import PostgresStore

        return PostgresStore.create(str(location), run_id, audit=audit)
    from esper_es.store.database import RunDatabase

    return RunDatabase.create(location, run_id, audit=audit)
