"""Content addresses of blobs (SPEC §3): a blob's key is the SHA-256 of its bytes.

Every backend checks a blob against its key when it reads it back, so a blob altered in place
is `TamperDetected`, never returned.
"""

from __future__ import annotations

import hashlib
from typing import Any

from esper_es.errors import TamperDetected


def checked_blob(key: str, row: tuple[Any, ...] | None) -> bytes:
    """The bytes of the stored row `(data, ...)` of `key`, checked (KeyError if there is none)."""
    if row is None:
        raise KeyError(f"no blob {key}")
    data = bytes(row[0])
    if hashlib.sha256(data).hexdigest() != key:
        raise TamperDetected(None, f"blob {key} does not match its hash")
    return data
