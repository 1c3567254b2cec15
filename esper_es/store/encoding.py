"""Events to stored rows and back: canonical payload text on append, decode + upcast on read.

Shared by every backend, so the same event is the same row (and the same hash) in each.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from esper_es.core.canonical import canonical_json, encode_string, loads
from esper_es.core.envelope import NewEvent, RecordedEvent
from esper_es.core.events import from_payload, to_payload
from esper_es.core.upcasting import upcast
from esper_es.errors import SchemaViolation, TamperDetected
from esper_es.store import schemas

#: The `events` columns in stored order (the order of a raw row everywhere in the store).
COLUMNS = (
    "seq, event_id, run_id, branch, stream, stream_version, type, schema_version, payload,"
    " causation_id, correlation_id, recorded_at, prev_hash, hash"
)
COLUMN_NAMES = tuple(c.strip() for c in COLUMNS.split(","))

#: A prepared event: the envelope, its type, schema version, canonical payload text, and the
#: payload itself where parsing that text gives it back exactly (`json_exact`), else None.
Encoded = tuple[NewEvent, str, int, str, "dict[str, Any] | None"]

_SCALARS = frozenset({str, int, float, bool, type(None)})


def json_exact(value: Any) -> bool:
    """Whether parsing `value`'s JSON gives `value` back: same values, same types throughout.

    True for str, int, float, bool and None (a finite float's JSON is its shortest repr, which
    parses to the same float), and for dicts with str keys and lists made of them; False for
    anything JSON changes on the way (a tuple becomes a list, a numpy float a float, an int key
    a str) or that is not JSON at all.
    """
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is dict:
        return all(type(k) is str and json_exact(v) for k, v in value.items())
    if kind is list:
        return all(json_exact(v) for v in value)
    return False


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed in canonical JSON")


# `canonical.loads` builds a JSONDecoder on every call (json.loads does, given any keyword);
# one built once parses the same way, refusing the same constants, ~1 µs an event faster.
_DECODE = json.JSONDecoder(parse_constant=_refuse_constant).decode


def decode_row(
    row: Sequence[Any], *, checked: bool = True, parsed: dict[str, Any] | None = None
) -> RecordedEvent:
    """A stored row as a RecordedEvent: payload parsed, upcast and checked against its schema.

    `checked=False` skips the schema check, for a row this process just encoded from a
    payload `encode` checked (its canonical JSON parses back to a valid payload). `parsed`:
    what parsing the row's payload text gives, when the caller has it already (`encode`'s
    payload, where `json_exact`); the text is then not parsed again.
    """
    (seq, eid, run_id, branch, stream, sv, type_name, version, payload_text,
     causation, correlation, recorded_at, prev_hash, h) = row  # fmt: skip
    if parsed is not None:
        payload = parsed
    elif type(payload_text) is str:
        payload = _DECODE(payload_text)
    else:
        payload = loads(payload_text)
    current, payload = upcast(type_name, version, payload)
    if checked:
        try:
            schemas.validate(type_name, current, payload)
        except SchemaViolation as exc:
            raise TamperDetected(seq, str(exc)) from None
    return RecordedEvent(
        seq, eid, run_id, branch, stream, sv, type_name, version, payload,
        from_payload(type_name, payload), causation, correlation, recorded_at, prev_hash, h,
    )  # fmt: skip


def _flat_encoder() -> Callable[[Any, int], Any] | None:
    """json's C encoder, built once, canonical settings, without the circular-reference check.

    `canonical_json` builds this encoder afresh (with a new markers dict) on every call: ~0.7 µs
    of its ~1.5 µs. Skipping the markers is safe only for payloads that cannot hold a container,
    i.e. already validated against a flat schema (`schemas.is_flat`).
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has it
        return None
    enc = json.JSONEncoder(ensure_ascii=False, allow_nan=False, sort_keys=True)
    return make(None, enc.default, encode_string, None, ":", ",", True, False, False)  # type: ignore[no-any-return]


_FLAT_ENCODE = _flat_encoder()


def encode(ne: NewEvent, stream: str) -> Encoded:
    """Check `ne` belongs to `stream` and matches its schema; its canonical payload text."""
    event = ne.event
    if event.stream() != stream:
        raise ValueError(f"{event.TYPE} belongs to stream {event.stream()!r}, not {stream!r}")
    type_name, version = event.TYPE, event.VERSION
    payload = to_payload(event)
    schemas.validate(type_name, version, payload)
    try:
        if _FLAT_ENCODE is not None and schemas.is_flat(type_name, version):
            text = "".join(_FLAT_ENCODE(payload, 0))
            exact = all(type(v) in _SCALARS for v in payload.values())
        else:
            text = canonical_json(payload)
            exact = json_exact(payload)
    except ValueError as exc:
        raise SchemaViolation(type_name, version, str(exc)) from None
    return ne, type_name, version, text, payload if exact else None
