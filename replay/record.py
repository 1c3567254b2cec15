"""Record the replay corpus: small runs with the fingerprints replay must reproduce.

    .venv/bin/python replay/record.py            # (re)records every run under replay/
    .venv/bin/python replay/record.py digits     # only some

Each run `<name>` is a directory with `run.db` (its audit trail beside it, as the trainer
writes it) and `expected.json`: per branch its head seq and final fingerprint, and every
`Checkpointed` fingerprint by seq. Everything is a function of the configs below and the
master seed (threads pinned to 1); only `run_id` and wall-clock times differ between two
recordings. Read replay/README.md before re-recording: it changes what "bit for bit" means.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parent

DIGITS = """
[train]
epochs = 3
batch_size = 32
controller_every_steps = 4
checkpoint_every_steps = 4

[host]
max_train_examples = 256
max_val_examples = 96

[driver]
contribution_examples = 48
fine_tune_steps = 4
evaluation_steps = 2

[lifecycle]
min_training_steps = 4
min_stabilization_steps = 2
embargo_steps = 4

[blending]
ramp_steps = 4

[controller]
plateau_window = 1
plateau_threshold = 100.0
cooldown_steps = 4
max_adaptations_per_epoch = 4
"""

TEXT = """
[train]
epochs = 2
batch_size = 16
lr = 0.003
seed_lr = 0.003
controller_every_steps = 4

[host]
task = "text"
d_model = 16
n_heads = 2
n_blocks = 1
window = 8
max_train_examples = 128
max_val_examples = 32

[seeds.layers]
"blocks.0" = 2

[driver]
contribution_examples = 16
fine_tune_steps = 2
evaluation_steps = 2

[lifecycle]
min_training_steps = 2
min_stabilization_steps = 1
embargo_steps = 2

[blending]
ramp_steps = 2

[controller]
plateau_window = 1
plateau_threshold = 100.0
cooldown_steps = 2
max_adaptations_per_epoch = 4
"""

PORTABLE = """
[determinism]
numerics = "portable"
"""

#: name -> (config, master seed, rollback: the boundary index to roll back to, or None).
#: Every run but `native` is portable (SPEC §5), so the suite replays them on any x86-64 CPU
#: with AVX2; `native` replays bit for bit on the CPU it was recorded on and is refused with
#: exit 4 on any other (tests/replay/test_corpus.py checks whichever applies).
RUNS: dict[str, tuple[str, int, int | None]] = {
    "digits": (DIGITS + PORTABLE, 0, None),
    "text": (TEXT + PORTABLE, 1, None),
    "rollback": (DIGITS + PORTABLE, 2, 12),
    "native": (DIGITS, 3, None),
    "decisions": (DIGITS + PORTABLE, 4, None),
    "learned": (
        DIGITS.replace("[controller]\n", '[controller]\nkind = "learned"\n') + PORTABLE,
        5,
        None,
    ),
}

#: Runs that learn across runs: run -> (master seeds, epochs) of the runs (same config, longer,
#: so that kernels end) that first fill a kernel library it then starts from (`[controller]
#: kind = "learned"`, docs/controller.md). The library is temporary: the recorded run replays
#: from its log alone.
WARM: dict[str, tuple[tuple[int, ...], int]] = {"learned": ((6, 7), 6)}

#: Runs whose user code also decides: run -> {step: (layer, call shape)}. After that step's
#: boundary a thread calls the orchestrator with the seed call shape (SPEC §4); the decision
#: is recorded, and must replay, at the next boundary (SPEC §6, "every decision replays").
USER_DECISIONS: dict[str, dict[int, tuple[str, str]]] = {
    "decisions": {5: ("layer2", "async"), 9: ("layer1", "sync")},
}


def user_hook(name: str) -> Any:
    """The `on_step` hook that makes run `name`'s user decisions from other threads."""
    import asyncio
    import threading
    import time

    from esper_es.core.decisions import AdaptationDecision

    plan = USER_DECISIONS.get(name, {})

    def call(trainer: Any, layer: str, shape: str) -> None:
        decision = AdaptationDecision(
            layer_name=layer, adaptation_type="add_seed", parameters={"num_seeds": 1},
            reason=f"user: {shape} call shape from a thread",
        )  # fmt: skip
        orchestrator = trainer.orchestrator
        if shape == "async":
            coro = orchestrator.apply_architecture_modification(model=trainer.model, decision=decision)
            asyncio.run(coro)
        else:
            orchestrator.apply_architecture_modification_sync(trainer.model, decision)

    def on_step(trainer: Any, step: int) -> None:
        if step in plan:
            threading.Thread(target=call, args=(trainer, *plan[step]), daemon=True).start()
            # Wait until it is queued, so it lands at the next boundary however threads run.
            while trainer.orchestrator.pending() == 0:
                time.sleep(0.001)

    return on_step


def expected(db_path: Path) -> dict[str, Any]:
    """What a replay of every branch must reproduce."""
    from esper_es.core import events as ev
    from esper_es.store.database import RunDatabase

    out: dict[str, Any] = {"branches": {}, "checkpoints": {}}
    with RunDatabase.open(db_path, readonly=True) as db:
        out["run_id"] = db.run_id
        for b in db.branches():
            last = None
            for rec in db.read(branch=b.name):
                if isinstance(rec.event, ev.Checkpointed):
                    out["checkpoints"][str(rec.seq)] = rec.event.fingerprint
                    last = rec.event.fingerprint
            out["branches"][b.name] = {
                "parent": b.parent,
                "fork_seq": b.fork_seq,
                "head_seq": db.head_seq(b.name),
                "fingerprint": last,
            }
    return out


def record(name: str) -> dict[str, Any]:
    """Record run `name` afresh into replay/<name>/."""
    from esper_es.config import config_from_dict
    from esper_es.replay import resume, rollback
    from esper_es.replay.log import RecordedLog
    from esper_es.replay.rollback import boundary_ends
    from esper_es.store.database import RunDatabase
    from esper_es.trainer import built_in_trainer

    text, seed, back = RUNS[name]
    folder = ROOT / name
    folder.mkdir(exist_ok=True)
    db = folder / "run.db"
    for suffix in ("", "-wal", "-shm", ".lock", ".audit.jsonl"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    config = config_from_dict(tomllib.loads(text))
    hook = user_hook(name) if name in USER_DECISIONS else None
    with tempfile.TemporaryDirectory() as tmp:
        if name in WARM:
            library = attrs.evolve(config.library, path=str(Path(tmp) / "library.db"))
            config = attrs.evolve(config, library=library)
            seeds, epochs = WARM[name]
            for warm in seeds:
                trainer = built_in_trainer(config, seed=warm, db_path=Path(tmp) / f"{warm}.db")
                trainer.run(epochs)
        built_in_trainer(config, seed=seed, db_path=db, on_step=hook).run()
    if back is not None:
        with RunDatabase.open(db, readonly=True) as rdb:
            ends = boundary_ends(RecordedLog(rdb, "main"))
        rollback(db, ends[back])
        resume(db)
    result = expected(db)
    result["numerics"] = config.determinism.numerics
    for suffix in ("-wal", "-shm", ".lock"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    (folder / "expected.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def main(names: list[str]) -> None:
    """Record the named runs (all when none is named), each in a fresh process.

    A fresh process per run because the numerics pins are read when torch starts: a portable
    run's process gets them before torch is imported, a native run's has them removed.
    """
    from esper_es.numerics import PORTABLE_ENV, pin_portable

    for name in names or list(RUNS):
        env = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV}
        if "numerics = \"portable\"" in RUNS[name][0]:
            pin_portable(env)
        subprocess.run([sys.executable, __file__, "--one", name], env=env, check=True)
        result = json.loads((ROOT / name / "expected.json").read_text())
        size = (ROOT / name / "run.db").stat().st_size
        heads = {b: v["head_seq"] for b, v in result["branches"].items()}
        print(f"{name}: {size} bytes, heads {heads}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        record(sys.argv[2])
    else:
        main(sys.argv[1:])
