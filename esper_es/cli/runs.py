"""`esper-es runs [DIR | postgresql://…]`: the runs in a folder or a PostgreSQL database, one
line each.

Everything shown is read from each file's own log (no side index that could drift from it):
`RunStarted` for when, what and with which config; the last `EpochCompleted` for the result;
the last `Checkpointed` for the fingerprint; `TrainingStopped` for how it ended. Only the
event types needed are read, so a long log costs one filtered scan, not a full decode.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from esper_es.errors import EsperError
from esper_es.store.backends import is_postgres, open_store, run_locations

__all__ = ["describe_run", "find_runs", "format_table"]

_TYPES = ("RunStarted", "EpochCompleted", "Checkpointed", "TrainingStopped", "RunRolledBack")
_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def find_runs(folder: Path) -> Iterator[Path]:
    """Candidate run files in `folder` (not its subfolders), oldest name first."""
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in _SUFFIXES:
            yield path


def _config_digest(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _host(payload: dict[str, Any]) -> str:
    host = payload.get("host") or {}
    config = payload.get("config") or {}
    if host.get("kind") == "custom":
        return str(host.get("factory") or "custom model")
    if not host:
        return "simulated"
    task = host.get("task") or (config.get("host") or {}).get("task")
    width = (config.get("host") or {}).get("width")
    return f"{task} w{width}" if task and width else str(task or "-")


def describe_run(location: str | Path) -> dict[str, Any]:
    """One run's row: id, start, host, config digest, epochs, result, fingerprint, branches."""
    with open_store(location, readonly=True) as db:
        branches = [b.name for b in db.branches()]
        head_seq = db.head_seq("main")
        started: dict[str, Any] | None = None
        recorded_at = None
        last: dict[str, dict[str, Any]] = {}
        for rec in db.read(branch="main", types=list(_TYPES)):
            if rec.type == "RunStarted" and started is None:
                started, recorded_at = dict(rec.payload), rec.recorded_at
            last[rec.type] = dict(rec.payload)
        run_id = db.run_id
        shown, backend, size = db.location, db.backend, db.storage_bytes()
    config = (started or {}).get("config") or {}
    planned = (config.get("train") or {}).get("epochs")
    epoch = last.get("EpochCompleted", {})
    stopped = last.get("TrainingStopped")
    status = stopped["reason"] if stopped else ("simulated" if not epoch else "unfinished")
    return {
        "path": shown,
        "backend": backend,
        "run_id": run_id,
        "started": recorded_at,
        "host": _host(started or {}),
        "config": _config_digest(config) if config else None,
        "epochs": epoch.get("epoch"),
        "epochs_planned": planned,
        "status": status,
        "val_accuracy": epoch.get("val_accuracy"),
        "val_loss": epoch.get("val_loss"),
        "fingerprint": last.get("Checkpointed", {}).get("fingerprint"),
        "head_seq": head_seq,
        "branches": branches,
        "bytes": size,
    }


def scan(where: str) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The runs in a folder or PostgreSQL database, newest first, and the databases that are
    not usable runs."""
    places: list[str] = (
        run_locations(where) if is_postgres(where) else [str(p) for p in find_runs(Path(where))]
    )
    runs: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for place in places:
        try:
            runs.append(describe_run(place))
        except EsperError as exc:
            skipped.append({"path": str(place), "why": str(exc)})
    runs.sort(key=lambda r: (r["started"] or "", r["path"]), reverse=True)
    return runs, skipped


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _when(stamp: str | None) -> str:
    if not stamp:
        return "-"
    # Shown in the reader's local time; the log keeps UTC.
    return datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M")


def _result(r: dict[str, Any]) -> str:
    if r["val_accuracy"] is not None:
        return f"acc {100 * r['val_accuracy']:.2f}%"
    if r["val_loss"] is not None:
        return f"loss {r['val_loss']:.4f}"
    return "-"


def _where(r: dict[str, Any]) -> str:
    # The file's name in its folder; a PostgreSQL run's schema (the database is the argument).
    if r.get("backend") == "postgresql":
        return "schema=" + str(r["path"]).rpartition("schema=")[2]
    return Path(r["path"]).name


def format_table(runs: list[dict[str, Any]]) -> list[str]:
    """The runs as aligned lines under a header."""
    header = ["RUN", "STARTED", "HOST", "CONFIG", "EPOCHS", "STATUS", "RESULT", "FINGERPRINT"]
    header += ["BRANCHES", "SIZE", "WHERE"]
    rows: list[list[str]] = [header]
    for r in runs:
        epochs = "-" if r["epochs"] is None else str(r["epochs"])
        if r["epochs_planned"] is not None and r["epochs"] is not None:
            epochs += f"/{r['epochs_planned']}"
        fp = r["fingerprint"]
        rows.append(
            [
                str(r["run_id"]),
                _when(r["started"]),
                str(r["host"]),
                str(r["config"] or "-"),
                epochs,
                str(r["status"]),
                _result(r),
                fp.removeprefix("sha256:")[:12] if fp else "-",
                str(len(r["branches"])),
                _size(r["bytes"]),
                _where(r),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
