"""Appending, decided the same way by every backend: versions checked, rows chained.

A backend opens its write transaction, reads the head and the ids already stored, and calls
`plan_append`; what comes back is the exact rows to insert. Hashes are computed here only, so
the same events make the same chain on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from esper_es.core.envelope import NewEvent
from esper_es.errors import ConcurrencyError
from esper_es.store.chain import row_hash
from esper_es.store.encoding import Encoded, encode
from esper_es.store.records import AppendResult, now_iso

#: The streams of one transaction: (stream, expected version, encoded events).
Prepared = list[tuple[str, int, list[Encoded]]]

#: What a stored event id is, for telling a retried append from a conflict:
#: event id -> (stream, type, payload text, seq).
Known = dict[str, tuple[str, str, str, int]]

#: A raw `events` row, columns in `encoding.COLUMNS` order.
Row = tuple[Any, ...]


def prepare(batches: Sequence[tuple[str, int, Sequence[NewEvent]]]) -> Prepared:
    """Encode and schema-check every event before any transaction starts."""
    return [
        (stream, expected, [encode(e, stream) for e in evs]) for stream, expected, evs in batches
    ]


def parsed_payloads(
    prepared: Prepared, results: Sequence[AppendResult]
) -> list[dict[str, Any] | None]:
    """Each planned row's payload as `encode` kept it (None: parse its text), row by row.

    Rows are planned for the streams not acknowledged, in order (`plan_append`).
    """
    return [
        enc[4]
        for (_, _, encs), result in zip(prepared, results, strict=True)
        if not result.acknowledged
        for enc in encs
    ]


def event_ids(prepared: Prepared) -> list[str]:
    """Every event id of a prepared append, in order."""
    return [enc[0].event_id for _, _, encs in prepared for enc in encs]


class PlansAppends(Protocol):
    """What `plan_for` reads of a store: its run, its streams' versions, its stored ids."""

    run_id: str

    def stream_version(self, stream: str, branch: str = ...) -> int:
        """The stream's current version on `branch`."""
        ...

    def _existing(self, ids: list[str]) -> Known:
        """The stored events among `ids`."""
        ...


def plan_for(
    store: PlansAppends, prepared: Prepared, branch: str, head: tuple[int, str], look_up_ids: bool
) -> tuple[list[Row], list[AppendResult], dict[str, int]]:
    """`plan_append` against `store`'s versions and ids (looked up only when asked), now."""
    return plan_append(
        prepared,
        branch=branch,
        run_id=store.run_id,
        head=head,
        version_of=lambda stream: store.stream_version(stream, branch),
        known=store._existing(event_ids(prepared)) if look_up_ids else {},
        recorded_at=now_iso(),
    )


def plan_append(
    prepared: Prepared,
    *,
    branch: str,
    run_id: str,
    head: tuple[int, str],
    version_of: Callable[[str], int],
    known: Known,
    recorded_at: str,
) -> tuple[list[Row], list[AppendResult], dict[str, int]]:
    """The rows to insert after `head`, the per-stream results, and the streams' new versions.

    Raises ConcurrencyError (nothing to insert) when a stream is not at its expected version
    or an id is reused for another event.
    """
    seq, prev = head
    rows: list[Row] = []
    results: list[AppendResult] = []
    new_versions: dict[str, int] = {}
    for stream, expected, encs in prepared:
        acked = acknowledged(stream, encs, known)
        if acked is not None:
            results.append(acked)
            continue
        actual = new_versions.get(stream)
        if actual is None:
            actual = version_of(stream)
        if actual != expected:
            raise ConcurrencyError(stream, expected, actual)
        seqs = []
        for ne, type_name, version, payload, _ in encs:
            seq += 1
            actual += 1
            h = row_hash(
                prev, seq, ne.event_id, run_id, branch, stream, actual, type_name,
                version, payload, ne.causation_id, ne.correlation_id, recorded_at,
            )  # fmt: skip
            rows.append(
                (seq, ne.event_id, run_id, branch, stream, actual, type_name, version,
                 payload, ne.causation_id, ne.correlation_id, recorded_at, prev, h)
            )  # fmt: skip
            prev = h
            seqs.append(seq)
        new_versions[stream] = actual
        results.append(AppendResult(stream, tuple(seqs), actual))
    return rows, results, new_versions


def acknowledged(stream: str, encs: list[Encoded], known: Known) -> AppendResult | None:
    """None if none of these events is stored; an acknowledgement if all are, identically."""
    hits = [known.get(enc[0].event_id) for enc in encs]
    if not any(hits):
        return None
    for (ne, type_name, _, payload, _), hit in zip(encs, hits, strict=True):
        if hit is None or hit[:3] != (stream, type_name, payload):
            raise ConcurrencyError(
                stream,
                None,
                None,
                f"event id {ne.event_id!r} is already used by a different event"
                if hit is not None
                else f"batch mixes stored and new events (first new: {ne.event_id!r})",
            )
    seqs = tuple(h[3] for h in hits if h is not None)
    return AppendResult(stream, seqs, -1, acknowledged=True)
