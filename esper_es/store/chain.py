"""The hash chain (SPEC §3): `hash = sha256(prev_hash ‖ canonical JSON of every other column)`.

The row's canonical JSON is assembled by hand from its known column types: it equals
`canonical_json({...})` byte for byte (a test checks) at a fraction of the cost, and this
runs once per appended event and once per verified event.
"""

from __future__ import annotations

import hashlib

from esper_es.core.canonical import encode_string

GENESIS = "0" * 64


def _s(value: str | None) -> str:
    return "null" if value is None else encode_string(value)


def row_json(
    seq: int,
    event_id: str,
    run_id: str,
    branch: str,
    stream: str,
    stream_version: int,
    type_name: str,
    schema_version: int,
    payload: str,
    causation_id: str | None,
    correlation_id: str | None,
    recorded_at: str,
) -> str:
    """Canonical JSON of an event row's columns other than `prev_hash` and `hash`."""
    return (
        f'{{"branch":{_s(branch)},"causation_id":{_s(causation_id)},'
        f'"correlation_id":{_s(correlation_id)},"event_id":{_s(event_id)},'
        f'"payload":{_s(payload)},"recorded_at":{_s(recorded_at)},"run_id":{_s(run_id)},'
        f'"schema_version":{int(schema_version)},"seq":{int(seq)},"stream":{_s(stream)},'
        f'"stream_version":{int(stream_version)},"type":{_s(type_name)}}}'
    )


def row_hash(
    prev_hash: str,
    seq: int,
    event_id: str,
    run_id: str,
    branch: str,
    stream: str,
    stream_version: int,
    type_name: str,
    schema_version: int,
    payload: str,
    causation_id: str | None,
    correlation_id: str | None,
    recorded_at: str,
) -> str:
    """The row's hash, chained to `prev_hash`."""
    body = row_json(
        seq, event_id, run_id, branch, stream, stream_version, type_name, schema_version,
        payload, causation_id, correlation_id, recorded_at,
    )  # fmt: skip
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()
