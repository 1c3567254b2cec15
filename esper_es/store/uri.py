"""SQLite URIs for paths: any file name works, `#`, `?`, `%` and spaces included (SPEC §9)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote


def readonly_uri(path: str | os.PathLike[str], *, immutable: bool = False, mode: str = "ro") -> str:
    """A `file:` URI that opens exactly `path`, read-only.

    SQLite reads `?` as the start of the query and `#` as a fragment in a URI, so an unescaped
    `run#1.db` opened `run` (creating it). Percent-encoding the absolute path leaves nothing
    for SQLite to reinterpret. `immutable` tells SQLite the file cannot change (no locks, no
    `-shm`): only for a file nothing can write. `mode="rw"` opens an existing file for
    writing (never creating it), for a reader that sets `PRAGMA query_only`.
    """
    absolute = Path(path).absolute()
    extra = "&immutable=1" if immutable else ""
    return f"file:{quote(str(absolute), safe='/')}?mode={mode}{extra}"
