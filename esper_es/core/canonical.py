"""Canonical JSON (SPEC §3): UTF-8, sorted keys, no whitespace, NaN and Infinity refused."""

from __future__ import annotations

import json
from typing import Any

_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)
# The C string encoder json itself uses; we call it directly on the hot path.
encode_string = json.encoder.encode_basestring


def canonical_json(value: Any) -> str:
    """Serialise a JSON value canonically; raises ValueError on NaN or Infinity."""
    return _ENCODER.encode(value)


def canonical_bytes(value: Any) -> bytes:
    """Canonical JSON of ``value`` as UTF-8 bytes."""
    return _ENCODER.encode(value).encode("utf-8")


def loads(text: str | bytes) -> Any:
    """Parse JSON, refusing NaN and Infinity so that a read payload is canonical-safe."""
    return json.loads(text, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed in canonical JSON")
