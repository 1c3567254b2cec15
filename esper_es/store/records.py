"""The small values every run-store backend shares: format constants, branches, append results."""

from __future__ import annotations

import datetime as dt

import attrs

FORMAT = "esper-es run database"
FORMAT_VERSION = 1
MAIN = "main"

#: The append-only triggers every backend installs (and `verify` requires).
TRIGGERS = (
    "events_append_only_update",
    "events_append_only_delete",
    "blobs_immutable_update",
    "blobs_immutable_delete",
)


@attrs.frozen(slots=True)
class AppendResult:
    """What one stream's append did: the seqs written (or found, when acknowledged)."""

    stream: str
    seqs: tuple[int, ...]
    version: int
    acknowledged: bool = False


@attrs.frozen(slots=True)
class Branch:
    """A line of history: `main`, or one opened by a rollback at `fork_seq` of `parent`."""

    name: str
    parent: str | None
    fork_seq: int
    created_seq: int


def now_iso() -> str:
    """Wall-clock time for people (never read by replay)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
