"""B4 on PostgreSQL: events appended per second by esper-es's PostgreSQL store against the
`eventsourcing` library's PostgreSQL recorder, on the same server, in the same run.

The server is a throw-away PostgreSQL started here (`tests/pg_server.py`, unix socket, fsync
on: every commit is durable, as SQLite's synchronous=FULL) unless `--dsn` names one. Each
library writes the same number of events in batches of the same size (one transaction per
batch) into a schema of its own; measurements are interleaved, medians of `--reps`. Timed:
the append / save calls only, not building the events.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from _common import batches_of, lifecycle_events, print_machine, stamped, table, timed
from b4_append import _es_seed

from esper_es.core.envelope import NewEvent
from esper_es.store.backends import create_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import pg_server


def esper_rate(url: str, events: list[NewEvent], batch: int) -> float:
    """Events per second appending `events` to a new run (schema), `batch` per transaction."""
    db = create_store(f"{url}&schema=b4_{uuid.uuid4().hex[:10]}", "bench")
    prepared = list(batches_of(events, batch, {}))

    def go() -> None:
        for b in prepared:
            db.append_batch(b)

    seconds = timed(go)
    db.close()
    return len(events) / seconds


def eventsourcing_rate(url: str, n: int, batch: int) -> float:
    """Events per second saving `n` events with eventsourcing's PostgreSQL application."""
    from eventsourcing.application import Application

    params = dict(parse_qsl(urlsplit(url).query))
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": urlsplit(url).path.lstrip("/") or "postgres",
        "POSTGRES_HOST": params.get("host", "localhost"),
        "POSTGRES_PORT": params.get("port", "5432"),
        "POSTGRES_USER": params.get("user", "postgres"),
        "POSTGRES_PASSWORD": params.get("password", ""),
        "POSTGRES_SCHEMA": f"es_{uuid.uuid4().hex[:10]}",
        "CREATE_TABLE": "y",
    }
    import psycopg

    from esper_es.store.pg_location import PgLocation

    with psycopg.connect(PgLocation.parse(url).conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {env['POSTGRES_SCHEMA']}")  # eventsourcing creates tables only
    Seed = _es_seed()
    app: Application[Any] = Application(env=env)
    aggs, left = [], n
    while left > 0:
        size = min(batch, left)
        agg = Seed()  # its creation event counts as one of the batch
        for i in range(size - 1):
            agg.adjust(alpha=i / size, step=i)
        aggs.append(agg)
        left -= size

    def go() -> None:
        for agg in aggs:
            app.save(agg)

    seconds = timed(go)
    app.close()
    return n / seconds


def main() -> None:
    """Run B4 on PostgreSQL and print its table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dsn", help="a PostgreSQL URL (default: start a throw-away server)")
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--single", type=int, default=300, help="events appended one per transaction")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    base = None
    url = args.dsn
    if url is None:
        if not pg_server.available():
            print("## B4 on PostgreSQL\n\nskipped: no PostgreSQL here (install postgresql)\n")
            return
        base = Path(tempfile.mkdtemp(prefix="b4-pg-", dir="/tmp"))
        url = pg_server.start(base, durable=True)
    try:
        events = stamped(list(lifecycle_events(args.events)))
        print(f"## B4 on PostgreSQL: events appended per second, {args.events} events\n")
        print_machine()
        print("Server: PostgreSQL 15, unix socket, fsync on, synchronous_commit on.\n")
        rows = []
        for batch in (1, 100, 1000):
            evs = events[: args.single] if batch == 1 else events
            ours: list[float] = []
            theirs: list[float] = []
            for rep in range(args.reps):
                # Interleaved, alternating who goes first: drift on a shared machine hits both.
                for ours_first in (True, False) if rep % 2 == 0 else (False, True):
                    if ours_first:
                        ours.append(esper_rate(url, evs, batch))
                    else:
                        theirs.append(eventsourcing_rate(url, len(evs), batch))
            o, t = sorted(ours)[len(ours) // 2], sorted(theirs)[len(theirs) // 2]
            rows.append([f"{batch}", f"{len(evs)}", f"{o:,.0f}", f"{t:,.0f}", f"{o / t:.2f}x"])
        table(
            [
                "events per transaction",
                "events",
                f"esper-es PostgresStore events/s (median of {args.reps})",
                "eventsourcing PostgreSQL recorder events/s",
                "esper-es ÷ eventsourcing",
            ],
            rows,
        )
    finally:
        if base is not None:
            pg_server.stop(base)


if __name__ == "__main__":
    main()
