"""B5: folding events into lifecycle state, no training.

(a) pure `evolve` over in-memory domain events of realistic lifecycles (many seeds, every
event type of the lifecycle, blend ramps); (b) the same events read back from a real run
database: rows read, payload parsed, upcast, schema-checked, structured into events, folded.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _common import (
    batches_of,
    lifecycle_events,
    median_of,
    print_machine,
    stamped,
    table,
    timed,
)

from esper_es.core import events as ev
from esper_es.core.decider import evolve
from esper_es.core.state import SeedState
from esper_es.store.database import RunDatabase

TARGET = 200_000


def fold_all(events: list[ev.SeedEvent]) -> dict[str, SeedState]:
    """Fold every seed's events into its state, in log order."""
    states: dict[str, SeedState] = {}
    get = states.get
    for e in events:
        s = get(e.seed)
        states[e.seed] = evolve(s if s is not None else SeedState.dormant(e.seed), e)
    return states


def read_and_fold(path: Path) -> int:
    """Open the run database read-only, read + decode every event and fold it; events read."""
    states: dict[str, SeedState] = {}
    n = 0
    with RunDatabase.open(path, readonly=True) as db:
        for rec in db.read():
            e = rec.event
            assert isinstance(e, ev.SeedEvent)
            s = states.get(e.seed)
            states[e.seed] = evolve(s if s is not None else SeedState.dormant(e.seed), e)
            n += 1
    return n


def main() -> None:
    """Run B5 and print its table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--seeds", type=int, default=500)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    events = list(lifecycle_events(args.events, seeds=args.seeds))
    n = len(events)
    kinds = len({type(e) for e in events})

    tmp = Path(tempfile.mkdtemp(prefix="b5-"))
    try:
        path = tmp / "run.db"
        with RunDatabase.create(path, "bench", audit=False) as db:
            for batch in batches_of(stamped(events), 5_000, {}):
                db.append_batch(batch)
        states = fold_all(events)
        pure = median_of(args.reps, lambda: n / timed(lambda: fold_all(events)))
        assert read_and_fold(path) == n
        stored = median_of(args.reps, lambda: n / timed(lambda: read_and_fold(path)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"## B5: folding events into lifecycle state ({n} events, {len(states)} seeds, "
        f"{kinds} event types)\n"
    )
    print_machine()
    table(
        [f"what (median of {args.reps})", "events/s", f"target ≥ {TARGET:,}"],
        [
            [
                "(a) pure `evolve` over in-memory events",
                f"{pure:,.0f}",
                "met" if pure >= TARGET else "missed",
            ],
            [
                "(b) read + decode (parse, upcast, schema check, structure) + fold, from SQLite",
                f"{stored:,.0f}",
                "met" if stored >= TARGET else "missed",
            ],
        ],
    )


if __name__ == "__main__":
    main()
