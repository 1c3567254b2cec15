"""The event ids a run file holds, known without a query while this connection created it.

A background commit is planned with every id of its events looked up (`commit_writer`: an
acknowledgement must be decided before the hand-off), one `SELECT … WHERE event_id IN (…)` per
boundary, ~0.1 ms of the training thread each (B2). A file this connection created holds only
the events this connection committed (the writer lock keeps every other writer out, and events
are never deleted), so the ids it committed are every id the file holds: an id not among them
is not stored, and only ids among them need asking the file. Up to `LIMIT` ids are kept (a few
megabytes); past that, or once another store's log was imported, the file is asked again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

#: Ids kept at most; a longer log asks the file (its boundaries' commits are then large anyway).
LIMIT = 1 << 16


class KnownIds:
    """The ids a created file holds, while they are all known (`None`: ask the file)."""

    def __init__(self) -> None:
        self._ids: set[str] | None = set()

    def committed(self, ids: Iterable[str]) -> None:
        """Note ids a transaction of this connection has just committed."""
        if self._ids is not None:
            self._ids.update(ids)
            if len(self._ids) > LIMIT:
                self._ids = None

    def forget(self) -> None:
        """Ask the file from now on (it holds ids this connection did not write)."""
        self._ids = None

    def to_ask(self, ids: Sequence[str]) -> Sequence[str]:
        """Those of `ids` the file may hold: all of them, unless every stored id is known."""
        known = self._ids
        if known is None:
            return ids
        return [i for i in ids if i in known]
