"""B8: bytes a second snapshot of unchanged weights adds (content-addressed blobs).

The model and optimizer are those of the built-in default run after training (seed layers
with kernels, Adam state); a first snapshot is written to a fresh run database, then a second
one of the same, unchanged state. Target (SPEC §10): the second adds <= 1 % of the first's
bytes. Also shown: the run database's size growth, measured on the file.

    .venv/bin/python bench/b8_snapshots.py [--epochs 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import attrs

from bench._common import print_machine, table
from esper_es.config import RunConfig
from esper_es.runtime.rng import capture_rng_state, encode_rng_state
from esper_es.store.database import RunDatabase
from esper_es.trainer.api import built_in_trainer
from esper_es.trainer.snapshots import write_snapshot


def main() -> None:
    """Run B8 and print its table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    config = RunConfig()
    config = attrs.evolve(config, train=attrs.evolve(config.train, epochs=args.epochs))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = built_in_trainer(config, seed=0, db_path=Path(tmp) / "run.db")
        trainer.run()
        rng = encode_rng_state(capture_rng_state())
        path = Path(tmp) / "snap.db"
        stats = []
        sizes = []
        with RunDatabase.create(path, "run-b8", audit=False) as db:
            for n in (1, 2):
                stats.append(write_snapshot(
                    db, model=trainer.model, optimizer=trainer.optimizer, rng_state=rng,
                    position={"epoch": args.epochs, "step": trainer.step, "n": n},
                    extra=trainer.snapshot_extra("after"),
                    grads={k: p.grad for k, p in trainer.model.named_parameters()
                           if p.grad is not None},
                ))  # fmt: skip
                db.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                sizes.append(path.stat().st_size)
    first, second = stats
    share = second.new_bytes / first.new_bytes
    print(f"## B8: a second snapshot of unchanged weights (default run, {args.epochs} epochs)\n")
    print_machine()
    table(
        ["snapshot", "tensors", "blobs new", "bytes new", "bytes referenced", "file size"],
        [
            ["first", first.tensors, first.new_blobs, first.new_bytes, first.total_bytes,
             sizes[0]],
            ["second (unchanged)", second.tensors, second.new_blobs, second.new_bytes,
             second.total_bytes, sizes[1]],
        ],
    )  # fmt: skip
    print(
        f"\nsecond ÷ first new bytes: {100 * share:.3f} % (target <= 1 %: "
        f"{'met' if share <= 0.01 else 'missed'})"
    )


if __name__ == "__main__":
    main()
