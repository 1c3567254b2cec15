"""`esper-es copy SRC DST`: move a run between backends, chain intact (SPEC §11).

    esper-es copy runs/a.db 'postgresql://me@db.example/runs?schema=a'   # SQLite -> PostgreSQL
    esper-es copy 'postgresql://me@db.example/runs?schema=a' runs/a2.db  # and back

The source is verified first; the destination must be new (exit 2 otherwise); the copy is
verified and must end at the source's head hash (exit 3 otherwise). Passwords in a URL are
never printed: pass them through PGPASSWORD or ~/.pgpass rather than the command line.
"""

from __future__ import annotations

import argparse
import json
import sys

from esper_es.errors import EXIT_OK
from esper_es.store.copying import copy_run


def cmd_copy(args: argparse.Namespace) -> int:
    """Verify SRC, copy it to the new DST, verify DST: same head hash."""
    report = copy_run(args.src, args.dst)
    obj = {"ok": True, "branch": "main", "fingerprint": None, **report.as_dict()}
    if args.json:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    else:
        print(
            f"COPIED  {report.source} -> {report.destination}: {report.events} events, "
            f"branches {', '.join(report.branches)}, {report.blobs} blobs; "
            f"head seq {report.head_seq} hash {report.head_hash} on both ends"
        )
    return EXIT_OK
