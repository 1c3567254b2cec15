"""The hash chain (SPEC §3): `hash = sha256(prev_hash ‖ canonical JSON of every other column)`.

The row's canonical JSON is assembled by hand from its known column types: it equals
`canonical_json({...})` byte for byte (a test checks) at a fraction of the cost, and this
runs once per appended event and once per verified event.
"""

from __future__ import annotations

import hashlib

from esper_es.core.canonical import encode_string

GENESIS = "0" * 64


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
    # json's own C string encoder, called directly; None is JSON null.
    enc = encode_string
    return (
        f'{{"branch":{enc(branch)},'
        f'"causation_id":{"null" if causation_id is None else enc(causation_id)},'
        f'"correlation_id":{"null" if correlation_id is None else enc(correlation_id)},'
        f'"event_id":{enc(event_id)},"payload":{enc(payload)},'
        f'"recorded_at":{enc(recorded_at)},"run_id":{enc(run_id)},'
        f'"schema_version":{int(schema_version)},"seq":{int(seq)},"stream":{enc(stream)},'
        f'"stream_version":{int(stream_version)},"type":{enc(type_name)}}}'
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
