"""Helpers of the replay tests: rewriting a copied log so that it still chains."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from esper_es.core.canonical import canonical_json
from esper_es.store.chain import row_hash
from esper_es.store.database import TRIGGERS, RunDatabase

QUICK = (Path(__file__).resolve().parents[1] / "fixtures" / "quick_run.toml").read_text("utf-8")


def copy_db(src: Path, dst: Path) -> Path:
    """A copy of a closed run database (its WAL already checkpointed)."""
    shutil.copyfile(src, dst)
    return dst


def rewrite_payload(
    path: Path,
    seq: int,
    change: Callable[[dict[str, Any]], None],
    schema_version: int | None = None,
) -> None:
    """Change one stored payload (and its schema version, if given) and re-chain every hash
    from it on (a forged, valid file; or an old version's row)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        trigger_sql = [
            r[0]
            for r in conn.execute(
                "SELECT sql FROM sqlite_master WHERE type='trigger' AND name IN"
                f" ({','.join('?' * len(TRIGGERS))})",
                TRIGGERS,
            )
        ]
        conn.execute("BEGIN")
        for name in TRIGGERS:
            conn.execute(f"DROP TRIGGER IF EXISTS {name}")
        payload = json.loads(
            conn.execute("SELECT payload FROM events WHERE seq=?", (seq,)).fetchone()[0]
        )
        change(payload)
        conn.execute("UPDATE events SET payload=? WHERE seq=?", (canonical_json(payload), seq))
        if schema_version is not None:
            conn.execute("UPDATE events SET schema_version=? WHERE seq=?", (schema_version, seq))
        rows = conn.execute(
            "SELECT seq, event_id, run_id, branch, stream, stream_version, type, schema_version,"
            " payload, causation_id, correlation_id, recorded_at, prev_hash FROM events"
            " WHERE seq>=? ORDER BY seq",
            (seq,),
        ).fetchall()
        prev = rows[0][-1]
        for r in rows:
            h = row_hash(prev, *r[:-1])
            conn.execute("UPDATE events SET prev_hash=?, hash=? WHERE seq=?", (prev, h, r[0]))
            prev = h
        for sql in trigger_sql:
            conn.execute(sql)
        conn.execute("COMMIT")
    finally:
        conn.close()


def row_hashes(path: Path) -> dict[int, str]:
    """seq -> hash of every stored row."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT seq, hash FROM events").fetchall())
    finally:
        conn.close()


def comparable_log(path: Path, *, ids: bool = False) -> list[tuple[Any, ...]]:
    """The log as (type, stream, payload[, ids]), without the stop events of a Ctrl-C."""
    with RunDatabase.open(path, readonly=True) as db:
        recs = list(db.read())
    stops = {
        i for i, r in enumerate(recs)
        if r.type == "TrainingStopped" and r.payload["reason"] == "interrupted"
    }  # fmt: skip
    drop = stops | {i - 1 for i in stops if recs[i - 1].type == "Checkpointed"}
    out = []
    for i, r in enumerate(recs):
        if i in drop:
            continue
        payload = dict(r.payload)
        payload.pop("run_id", None) if r.type == "RunStarted" else None
        row: tuple[Any, ...] = (r.type, r.stream, payload)
        if ids:
            row += (r.event_id, r.causation_id, r.correlation_id, r.stream_version)
        out.append(row)
    return out
