"""PostgreSQL for the tests: a server's URL, and a fresh schema (one run) per test.

Where `ESPER_ES_TEST_PG_DSN` names a server (`.ci/run` starts one with `tests/pg_server.py`),
the tests use it. Otherwise, where PostgreSQL is installed, each test process starts its
own throw-away server. Where neither is possible the PostgreSQL tests skip saying why,
unless `ESPER_ES_REQUIRE_PG=1` (set by `.ci/run`): then a missing server fails them, so CI
can never pass with the PostgreSQL half silently skipped.
"""

from __future__ import annotations

import atexit
import os
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pg_server
import pytest

_started: list[str] = []


def server_url() -> str:
    """The test server's URL (starting a private one if needed), or skip / fail."""
    given = os.environ.get("ESPER_ES_TEST_PG_DSN")
    if given:
        return given
    if _started:
        return _started[0]
    if not pg_server.available():
        reason = "no PostgreSQL server: set ESPER_ES_TEST_PG_DSN or install postgresql"
        if os.environ.get("ESPER_ES_REQUIRE_PG") == "1":
            pytest.fail(f"ESPER_ES_REQUIRE_PG=1 but {reason}")
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="esper-pg-", dir="/tmp"))
    url = pg_server.start(base)
    atexit.register(pg_server.stop, base)
    _started.append(url)
    return url


def fresh_database(prefix: str = "d") -> str:
    """A new, empty database on the test server (for listing its runs alone); its URL."""
    import psycopg

    from esper_es.store.pg_location import PgLocation

    url = server_url()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PgLocation.parse(url).conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(url)
    # Spliced by hand: urlunsplit drops the `//` of a URL with no host before the path.
    return f"{parts.scheme}://{parts.netloc}/{name}?{parts.query}"


def fresh_url(prefix: str = "t") -> str:
    """A location for a new run in its own schema on the test server."""
    url = server_url()
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}schema={prefix}_{uuid.uuid4().hex[:12]}"
