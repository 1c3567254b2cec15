"""The audit trail: every appended event as one structlog JSON line, beside an SQLite file
(`AuditTrail`) or in a PostgreSQL run's `audit` table (`AuditLines`).

It is for people and for `verify`, which cross-checks its seqs and hashes against the log
(a database whose tail was cut is caught this way). The file's lines are written after the
commit, so the trail may lag a crash by the last transaction, never lead it; PostgreSQL's go in
the transaction of their events, so they always match (and cost no extra commit).

Cost: one structlog call per *committed batch*, not per event. The batch goes through the
bound logger's processor chain once (time stamp, then `_render_batch`), which renders one
canonical JSON line per event and hands them to `WriteLogger` as one write and one flush.
A structlog call per event cost ~9 µs an event (processor chain, a dict per line, a flush per
line), most of the append budget of B4; per batch it is ~1 µs (bench/b4_append.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, TextIO

import structlog

from esper_es.core.canonical import canonical_json, encode_string

_ROWS = "_rows"
_STAMP = "timestamp"
# The line's per-event fields, in canonical (sorted) key order, with each one's column in an
# `events` row (tuples in `events` column order) and its %-conversion.
_ROW_FIELDS = (
    ("branch", 3, "%s"),
    ("causation_id", 9, "%s"),
    ("correlation_id", 10, "%s"),
    ("event_id", 1, "%s"),
    ("hash", 13, "%s"),
    ("seq", 0, "%d"),
    ("stream", 4, "%s"),
    ("stream_version", 5, "%d"),
    ("type", 6, "%s"),
)
_ROW_NAMES = frozenset(name for name, _, _ in _ROW_FIELDS)
# `_render_batch` fills the placeholders positionally in this order; it must stay sorted.
_PLACEHOLDERS = (*(name for name, _, _ in _ROW_FIELDS[:8]), _STAMP, "type")
if list(_PLACEHOLDERS) != sorted({*_ROW_NAMES, _STAMP}):  # pragma: no cover - edit guard
    raise AssertionError("audit placeholders are out of canonical key order")


@lru_cache(maxsize=64)
def _template(common: tuple[tuple[str, str], ...]) -> str:
    """The %-template of a line: fixed context rendered once, the time stamp and the row's
    fields left as placeholders, keys in the order canonical JSON sorts them."""
    slots = {name: conv for name, _, conv in _ROW_FIELDS}
    slots[_STAMP] = "%s"
    fixed = dict(common)
    parts = []
    for key in sorted({*fixed, *slots}):
        value = slots[key] if key in slots else fixed[key].replace("%", "%%")
        parts.append(f"{str(encode_string(key)).replace('%', '%%')}:{value}")
    return "{" + ",".join(parts) + "}"


def _render_batch(_: Any, __: str, event_dict: Any) -> str:
    """Render each row as the canonical JSON of (context + event + time stamp + its fields)."""
    rows: Sequence[Sequence[Any]] = event_dict.pop(_ROWS)
    clash = _ROW_NAMES.intersection(event_dict)
    if clash:
        raise ValueError(f"audit context may not bind {sorted(clash)}")
    stamp = str(encode_string(event_dict.pop(_STAMP)))
    template = _template(tuple(sorted((k, canonical_json(v)) for k, v in event_dict.items())))
    # Positional, in `_PLACEHOLDERS` order.
    enc = encode_string
    null = "null"
    return "\n".join(
        [
            template
            % (
                enc(r[3]),
                null if r[9] is None else enc(r[9]),
                null if r[10] is None else enc(r[10]),
                enc(r[1]),
                enc(r[13]),
                r[0],
                enc(r[4]),
                r[5],
                stamp,
                enc(r[6]),
            )
            for r in rows
        ]
    )


def _bound(logger: Any, run_id: str) -> Any:
    """A structlog logger that renders a batch of rows as their audit lines, for `logger`."""
    return structlog.wrap_logger(
        logger,
        processors=[structlog.processors.TimeStamper(fmt="iso", utc=True), _render_batch],
        context_class=dict,
    ).bind(run_id=run_id)


class AuditLines:
    """Renders committed rows as audit lines, for a store that keeps them itself (PostgreSQL's
    `audit` table): the same structlog chain and bytes as the file trail."""

    def __init__(self, run_id: str) -> None:
        # ReturnLogger hands back what the processors rendered instead of writing it.
        self._log = _bound(structlog.ReturnLogger(), run_id)

    def render(self, rows: Sequence[Sequence[Any]]) -> list[tuple[int, str]]:
        """`(seq, line)` for each row (tuples in `events` column order)."""
        if not rows:
            return []
        text: str = self._log.info("event_appended", **{_ROWS: rows})
        return list(zip((int(r[0]) for r in rows), text.split("\n"), strict=True))


class AuditTrail:
    """Appends one JSON line per event to `<db>.audit.jsonl`."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path = path
        self.run_id = run_id
        # Opened at the first record: a writer that stops before appending anything (a resume
        # refused by its checks) must not leave a file behind (SPEC §9).
        self._fh: TextIO | None = None
        self._log: Any = None

    def record(self, rows: Sequence[Sequence[Any]]) -> None:
        """Log the rows just committed (tuples in `events` column order), one line each."""
        if not rows:
            return
        if self._fh is None:
            self._fh = self.path.open("a", encoding="utf-8", buffering=1 << 16)
            self._log = _bound(structlog.WriteLogger(self._fh), self.run_id)
        # WriteLogger writes the rendered lines and a final newline, then flushes.
        self._log.info("event_appended", **{_ROWS: rows})

    def close(self) -> None:
        """Flush and close the file."""
        if self._fh is not None:
            self._fh.close()
