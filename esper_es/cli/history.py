"""`esper-es history`: the audit timeline, each event with the command and decision behind it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from esper_es.store.database import RunDatabase

_ID_KEYS = {"seed", "step"}


def timeline(
    db: RunDatabase,
    *,
    branch: str | None,
    stream: str | None = None,
    type_name: str | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Events in seq order as JSON-able rows: what happened, where, when, and why."""
    rows = db.read(branch=branch, stream=stream, types=[type_name] if type_name else None)
    for n, rec in enumerate(rows):
        if limit is not None and n >= limit:
            return
        yield {
            "seq": rec.seq,
            "branch": rec.branch,
            "stream": rec.stream,
            "stream_version": rec.stream_version,
            "type": rec.type,
            "schema_version": rec.schema_version,
            "step": rec.payload.get("step"),
            "payload": dict(rec.payload),
            "event_id": rec.event_id,
            "causation_id": rec.causation_id,
            "correlation_id": rec.correlation_id,
            "recorded_at": rec.recorded_at,
        }


def summary(row: dict[str, Any]) -> str:
    """One readable line of an event's payload."""
    p = row["payload"]
    parts = [f"{k}={_short(v)}" for k, v in p.items() if k not in _ID_KEYS]
    return " ".join(parts)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{…}"
    text = str(v)
    return text if len(text) <= 40 else text[:37] + "…"
