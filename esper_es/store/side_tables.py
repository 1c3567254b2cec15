"""The run database's side tables: what is kept beside the events, outside the hash chain.

`signatures` (written by `esper-es sign`, see signing.py) and the kernel library's
`kernel_artifacts` / `kernel_outcomes` (docs/kernel-library.md). The DDL is in the subset
SQLite and PostgreSQL share, so every backend keeps the same tables; `copy` moves them with
the log, in `SIDE_TABLES` order. Integers are BIGINT and reals DOUBLE PRECISION: the same
affinity as INTEGER / REAL to SQLite, and no narrowing on PostgreSQL.
"""

from __future__ import annotations

from typing import Final

SIGNATURES_TABLE: Final = """
CREATE TABLE IF NOT EXISTS signatures (
    key_id     TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    head_hash  TEXT NOT NULL,
    public_key TEXT NOT NULL,
    signature  TEXT NOT NULL,
    signed_at  TEXT NOT NULL,
    PRIMARY KEY (key_id, seq)
)
"""

KERNEL_TABLES: Final = (
    """CREATE TABLE IF NOT EXISTS kernel_artifacts (
        kernel_id TEXT PRIMARY KEY, blob_key TEXT NOT NULL, blueprint TEXT NOT NULL,
        version BIGINT NOT NULL, config TEXT NOT NULL, shape_kind TEXT NOT NULL,
        channels BIGINT NOT NULL, init_seed BIGINT NOT NULL, params BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS kernel_outcomes (
        run_id TEXT NOT NULL, branch TEXT NOT NULL, seed TEXT NOT NULL,
        kernel_id TEXT NOT NULL, blueprint TEXT NOT NULL, config TEXT NOT NULL,
        shape_kind TEXT NOT NULL, outcome TEXT NOT NULL, contribution DOUBLE PRECISION,
        params BIGINT NOT NULL, germinated_step BIGINT NOT NULL, ended_step BIGINT NOT NULL,
        seconds DOUBLE PRECISION NOT NULL, PRIMARY KEY (run_id, branch, seed, kernel_id))""",
)

#: Every side table and the statement that creates it.
SIDE_TABLES: Final = {
    "signatures": SIGNATURES_TABLE,
    "kernel_artifacts": KERNEL_TABLES[0],
    "kernel_outcomes": KERNEL_TABLES[1],
}
