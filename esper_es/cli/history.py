"""`esper-es history`: the audit timeline, each event with the command and decision behind it.

Filters are checked before anything prints: a type or stream that matches nothing because it
is misspelt is an error that says what exists, not an empty timeline that looks like an
answer. Output is a table that fits the terminal (`--full` wraps instead of cutting), JSON
lines, or CSV; `--follow` keeps printing a live run's events until it stops.
"""

from __future__ import annotations

import collections
import csv
import json
import shutil
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TextIO

from esper_es.core.events import EVENT_TYPES
from esper_es.errors import EXIT_USAGE, EsperError
from esper_es.store.protocol import RunStore

__all__ = [
    "FORMATS",
    "UnknownFilter",
    "check_stream",
    "check_types",
    "follow",
    "summary",
    "timeline",
    "write_rows",
]

#: What `--format` accepts.
FORMATS = ("table", "json", "csv")

_ID_KEYS = {"seed", "step"}
#: Shown first, because they answer "why" (SPEC §4: every decision carries its reason).
_FIRST_KEYS = ("reason", "strategy", "adaptation_type", "layer", "blueprint", "alpha")
_CSV_FIELDS = (
    "seq",
    "branch",
    "step",
    "stream",
    "stream_version",
    "type",
    "schema_version",
    "payload",
    "event_id",
    "causation_id",
    "correlation_id",
    "recorded_at",
)
#: The event that ends a run's branch; `--follow` stops after it.
_END_OF_RUN = "TrainingStopped"


class UnknownFilter(EsperError):
    """A `history` filter names an event type or stream that does not exist."""

    exit_code = EXIT_USAGE

    def __init__(
        self, what: str, given: str, known: Sequence[str], hint: str = "", listed: int = 12
    ) -> None:
        self.what = what
        self.given = given
        self.known = tuple(known)
        shown = ", ".join(self.known[:listed]) + (", …" if len(self.known) > listed else "")
        super().__init__(f"no {what} {given!r}{hint}; known: {shown or 'none'}")


def check_types(names: Sequence[str] | None) -> list[str] | None:
    """The event type names, each checked against the types esper-es writes."""
    if not names:
        return None
    lower = {t.lower(): t for t in EVENT_TYPES}
    for name in names:
        if name not in EVENT_TYPES:
            near = lower.get(name.lower())
            hint = f" (did you mean {near}?)" if near else ""
            raise UnknownFilter("event type", name, sorted(EVENT_TYPES), hint, len(EVENT_TYPES))
    return list(dict.fromkeys(names))


def check_stream(db: RunStore, stream: str | None, branch: str) -> None:
    """Refuse a stream the file has never written, listing the ones it has."""
    if stream is None or next(db.read(stream=stream, branch=None), None) is not None:
        return
    # Only on the error path: a full read is the one way to list streams every store has.
    known = sorted({rec.stream for rec in db.read(branch=branch)})
    near = [s for s in known if s.endswith(stream) or stream in s]
    hint = f" (did you mean {near[0]}?)" if near else ""
    raise UnknownFilter("stream", stream, known, hint)


def timeline(
    db: RunStore,
    *,
    branch: str | None,
    stream: str | None = None,
    types: Sequence[str] | None = None,
    limit: int | None = None,
    tail: int | None = None,
    from_seq: int = 1,
) -> Iterator[dict[str, Any]]:
    """Events in seq order as JSON-able rows: what happened, where, when, and why."""
    records: Iterable[Any] = db.read(
        branch=branch, stream=stream, types=types or None, from_seq=from_seq
    )
    if tail is not None:
        records = collections.deque(records, maxlen=tail)
    for n, rec in enumerate(records):
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


def summary(row: dict[str, Any], *, full: bool = False) -> str:
    """One readable line of an event's payload: the reason first, ids left out."""
    p = row["payload"]
    keys = [k for k in _FIRST_KEYS if k in p] + [
        k for k in p if k not in _ID_KEYS and k not in _FIRST_KEYS
    ]
    return " ".join(f"{k}={_value(p[k], full)}" for k in keys)


def _value(v: Any, full: bool) -> str:
    if isinstance(v, float):
        return repr(v) if full else f"{v:.4g}"
    if isinstance(v, dict | list) and full:
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    if isinstance(v, dict):
        return "{…}" if v else "{}"
    text = str(v)
    if full or len(text) <= 60:
        return text
    return text[:59] + "…"


def _table_cells(row: dict[str, Any], full: bool) -> list[str]:
    details = summary(row, full=full)
    if row["branch"] != "main":
        details = f"(branch {row['branch']}) {details}"
    step = row["step"]
    return [
        str(row["seq"]),
        "-" if step is None else str(step),
        row["stream"],
        row["type"],
        details,
    ]


def _cause(row: dict[str, Any], full: bool) -> str:
    """`← command [decision]`: what caused the event, and the decision it serves."""

    def short(ident: str) -> str:
        # Like a short git hash: enough to find the full id with --full or --format json.
        return ident if full or len(ident) <= 22 else ident[:21] + "…"

    text = f" ← {short(row['causation_id'])}" if row["causation_id"] else ""
    return text + (f" [{short(row['correlation_id'])}]" if row["correlation_id"] else "")


class TableWriter:
    """Aligned columns under one header, fitted to the terminal's width."""

    HEADER = ("SEQ", "STEP", "STREAM", "TYPE", "DETAILS")

    def __init__(self, out: TextIO, *, full: bool, width: int | None = None) -> None:
        self.out = out
        self.full = full
        self.width = width or shutil.get_terminal_size(fallback=(160, 24)).columns
        # Fixed once the first rows are seen, so a followed run's later rows line up.
        self.widths = [7, 6, 6, max(map(len, EVENT_TYPES))]
        self.header_done = False

    def write(self, rows: Iterable[dict[str, Any]]) -> int:
        """Write rows (the header before the first); returns how many."""
        n = 0
        rows = list(rows)
        for row in rows:
            if not self.header_done:
                streams = [len(r["stream"]) for r in rows]
                self.widths[2] = min(24, max(self.widths[2], *streams))
                self._line(list(self.HEADER), "")
                self.header_done = True
            self._line(_table_cells(row, self.full), _cause(row, self.full))
            n += 1
        return n

    def _line(self, cells: list[str], cause: str) -> None:
        fixed = [
            c.rjust(w) if i < 2 else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, self.widths, strict=False))
        ]
        lead = "  ".join(fixed) + "  "
        room = max(20, self.width - len(lead))
        details = cells[4]
        if self.full:
            lines = textwrap.wrap(details + cause, room, break_on_hyphens=False) or [""]
            self.out.write(lead + lines[0] + "\n")
            for more in lines[1:]:
                self.out.write(" " * len(lead) + more + "\n")
            return
        # The payload gives way before the cause: who caused an event is the audit's point.
        keep = max(0, room - len(cause))
        if len(details) > keep:
            details = details[: max(0, keep - 1)] + "…"
        line = details + cause
        self.out.write(lead + (line if len(line) <= room else line[: room - 1] + "…") + "\n")


def write_rows(
    fmt: str, out: TextIO, *, full: bool = False
) -> Callable[[list[dict[str, Any]]], int]:
    """A writer for `fmt` that can be called again with later rows (for `--follow`)."""
    if fmt == "table":
        table = TableWriter(out, full=full)
        return lambda rows: table.write(rows)
    if fmt == "json":

        def jsonl(rows: list[dict[str, Any]]) -> int:
            for row in rows:
                out.write(json.dumps(row, sort_keys=True, default=str) + "\n")
            return len(rows)

        return jsonl
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=_CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()

        def to_csv(rows: list[dict[str, Any]]) -> int:
            for row in rows:
                flat = dict(row, payload=json.dumps(row["payload"], sort_keys=True))
                writer.writerow(flat)
            return len(rows)

        return to_csv
    raise ValueError(f"unknown history format {fmt!r}; known: {', '.join(FORMATS)}")


def follow(
    db: RunStore,
    write: Callable[[list[dict[str, Any]]], int],
    *,
    branch: str,
    after_seq: int,
    stream: str | None,
    types: Sequence[str] | None,
    ended: bool,
    poll_seconds: float = 0.5,
) -> int:
    """Keep writing new events of a live run until its TrainingStopped; returns how many."""
    n = 0
    while not ended:
        time.sleep(poll_seconds)
        # Unfiltered, so the end of the run is seen even when the filters hide it.
        new = list(timeline(db, branch=branch, from_seq=after_seq + 1))
        if not new:
            continue
        after_seq = new[-1]["seq"]
        ended = any(r["type"] == _END_OF_RUN for r in new)
        shown = [
            r
            for r in new
            if (stream is None or r["stream"] == stream) and (not types or r["type"] in types)
        ]
        n += write(shown)
        sys.stdout.flush()
    return n


def plural(n: int, word: str) -> str:
    """`1 event`, `2 events`."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
