"""The PostgreSQL backend's schema: one schema per run, the same tables as an SQLite file.

Column for column what `sqlite_files.initialise` makes (types mapped: TEXT, BIGINT, BYTEA),
with the four append-only triggers under the same names plus two refusing TRUNCATE (which
PostgreSQL does not route through row triggers). Where an SQLite run keeps its audit trail in a
file beside it, a PostgreSQL run keeps the same lines in an append-only `audit` table (made
unless the run is created with `audit=False`; runs made before it existed have none).
"""

from __future__ import annotations

import hashlib
from typing import Any

from psycopg import sql

from esper_es import __version__
from esper_es.store.records import FORMAT, FORMAT_VERSION, MAIN, TRIGGERS, now_iso

#: The extra triggers PostgreSQL needs: TRUNCATE skips row-level triggers.
TRUNCATE_TRIGGERS = ("events_append_only_truncate", "blobs_immutable_truncate")
ALL_TRIGGERS = TRIGGERS + TRUNCATE_TRIGGERS

_TABLES = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
    """CREATE TABLE events (
        seq BIGINT PRIMARY KEY, event_id TEXT NOT NULL, run_id TEXT NOT NULL,
        branch TEXT NOT NULL, stream TEXT NOT NULL, stream_version BIGINT NOT NULL,
        type TEXT NOT NULL, schema_version INTEGER NOT NULL, payload TEXT NOT NULL,
        causation_id TEXT, correlation_id TEXT, recorded_at TEXT NOT NULL,
        prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
    "CREATE UNIQUE INDEX idx_events_event_id ON events (event_id)",
    "CREATE UNIQUE INDEX idx_events_branch_stream_stream_version"
    " ON events (branch, stream, stream_version)",
    "CREATE TABLE blobs (key TEXT PRIMARY KEY, size BIGINT NOT NULL, data BYTEA NOT NULL)",
    """CREATE TABLE branches (name TEXT PRIMARY KEY, parent TEXT, fork_seq BIGINT NOT NULL,
        created_seq BIGINT NOT NULL)""",
    """CREATE FUNCTION esper_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '% are %: % refused', TG_TABLE_NAME, TG_ARGV[0], TG_OP; END $$""",
)

_TRIGGER_SPECS = (
    ("events_append_only_update", "UPDATE", "events", "append-only", "ROW"),
    ("events_append_only_delete", "DELETE", "events", "append-only", "ROW"),
    ("blobs_immutable_update", "UPDATE", "blobs", "content-addressed", "ROW"),
    ("blobs_immutable_delete", "DELETE", "blobs", "content-addressed", "ROW"),
    ("events_append_only_truncate", "TRUNCATE", "events", "append-only", "STATEMENT"),
    ("blobs_immutable_truncate", "TRUNCATE", "blobs", "content-addressed", "STATEMENT"),
)
_AUDIT_TABLE = "CREATE TABLE audit (seq BIGINT PRIMARY KEY, line TEXT NOT NULL)"
_AUDIT_TRIGGER_SPECS = (
    ("audit_append_only_update", "UPDATE", "audit", "append-only", "ROW"),
    ("audit_append_only_delete", "DELETE", "audit", "append-only", "ROW"),
    ("audit_append_only_truncate", "TRUNCATE", "audit", "append-only", "STATEMENT"),
)
#: The audit table's triggers, checked where the table exists.
AUDIT_TRIGGERS = tuple(spec[0] for spec in _AUDIT_TRIGGER_SPECS)


def create_statements(run_id: str, *, audit: bool = True) -> list[tuple[Any, tuple[Any, ...]]]:
    """The statements that make an empty run in the current schema (search_path set)."""
    tables = (*_TABLES, _AUDIT_TABLE) if audit else _TABLES
    specs = (*_TRIGGER_SPECS, *_AUDIT_TRIGGER_SPECS) if audit else _TRIGGER_SPECS
    out: list[tuple[Any, tuple[Any, ...]]] = [(sql.SQL(s), ()) for s in tables]
    for name, op, table, why, level in specs:
        stmt = sql.SQL(
            "CREATE TRIGGER {} BEFORE {} ON {} FOR EACH {} EXECUTE FUNCTION esper_refuse({})"
        ).format(
            sql.Identifier(name), sql.SQL(op), sql.Identifier(table), sql.SQL(level),
            sql.Literal(why),
        )  # fmt: skip
        out.append((stmt, ()))
    meta = [
        ("format", FORMAT),
        ("format_version", str(FORMAT_VERSION)),
        ("run_id", run_id),
        ("created_at", now_iso()),
        ("created_by", f"esper-es {__version__}"),
    ]
    for key, value in meta:
        out.append((sql.SQL("INSERT INTO meta (key, value) VALUES (%s, %s)"), (key, value)))
    out.append(
        (
            sql.SQL(
                "INSERT INTO branches (name, parent, fork_seq, created_seq) VALUES (%s,%s,0,0)"
            ),
            (MAIN, None),
        )
    )
    return out


def lock_key(schema: str) -> int:
    """The advisory-lock key of a run's single writer: 64 bits of SHA-256 of its schema."""
    digest = hashlib.sha256(f"esper-es writer:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


#: Schemas that hold an esper-es run: both core tables present.
LIST_RUN_SCHEMAS = (
    "SELECT table_schema FROM information_schema.tables WHERE table_name IN ('events', 'meta')"
    " GROUP BY table_schema HAVING count(*) = 2 ORDER BY table_schema"
)

#: The installed, enabled triggers of a schema (a disabled trigger refuses nothing).
ENABLED_TRIGGERS = (
    "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON t.tgrelid = c.oid"
    " JOIN pg_namespace n ON c.relnamespace = n.oid"
    " WHERE n.nspname = %s AND NOT t.tgisinternal AND t.tgenabled <> 'D'"
)

#: The bytes of a schema's tables, with their indexes and TOAST.
SCHEMA_BYTES = (
    "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c"
    " JOIN pg_namespace n ON c.relnamespace = n.oid WHERE n.nspname = %s AND c.relkind = 'r'"
)

TABLE_COLUMNS = (
    "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s"
)
