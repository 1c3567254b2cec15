"""The audit trail: every appended event as one structlog JSON line beside the database.

It is for people and for `verify`, which cross-checks its seqs and hashes against the log
(a database whose tail was cut is caught this way). Lines are written after the commit, so
the trail may lag a crash by the last transaction, never lead it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import structlog

from esper_es.core.canonical import canonical_json


def _render(_: Any, __: str, event_dict: Any) -> str:
    return canonical_json(event_dict)


class AuditTrail:
    """Appends one JSON line per event to `<db>.audit.jsonl`."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path = path
        self._fh: TextIO = path.open("a", encoding="utf-8", buffering=1 << 16)
        self._log = structlog.wrap_logger(
            structlog.WriteLogger(self._fh),
            processors=[structlog.processors.TimeStamper(fmt="iso", utc=True), _render],
            context_class=dict,
        ).bind(run_id=run_id)

    def record(self, rows: Sequence[Sequence[Any]]) -> None:
        """Log the rows just committed (tuples in `events` column order)."""
        info = self._log.info
        for row in rows:
            info(
                "event_appended",
                seq=row[0],
                event_id=row[1],
                branch=row[3],
                stream=row[4],
                stream_version=row[5],
                type=row[6],
                causation_id=row[9],
                correlation_id=row[10],
                hash=row[13],
            )
        self._fh.flush()

    def close(self) -> None:
        """Flush and close the file."""
        self._fh.close()
