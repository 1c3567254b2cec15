"""`--nproc N` on the command line (SPEC §11): how many ranks a command runs with.

`train --nproc N` trains on N ranks of this machine; `replay`, `resume` and `rollback` take
the world size recorded in the run's `RunStarted` unless `--nproc` names one (a different one
is refused with exit 4 by the re-execution). Under `torchrun` the world is torchrun's. Torch
and the trainer are imported only when a command runs on several ranks.
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def run(args: argparse.Namespace) -> int:
    """Run the parsed command, on as many ranks as it asks for."""
    if not hasattr(args, "nproc"):
        return int(args.func(args))
    from esper_es.errors import WorldSizeError

    nproc = args.nproc
    if nproc is not None and nproc < 1:
        raise WorldSizeError(f"--nproc must be at least 1, got {nproc}")
    torchrun = "WORLD_SIZE" in os.environ
    recorded = None if args.command == "train" else _recorded_run(args.db)
    if nproc is None and recorded is not None and not torchrun:
        # Under torchrun the world is torchrun's; a re-execution refuses a different one.
        nproc = int(recorded.get("world_size", 1))
    if nproc in (None, 1) and not torchrun:
        return int(args.func(args))
    from esper_es.trainer.launch import run_ranks, trainer_builder

    return run_ranks(
        nproc,
        lambda: int(args.func(args)),
        trainer_builder(getattr(args, "factory", None)),
        device=_device(args, recorded),
        recorded_backend=None if recorded is None else recorded.get("backend"),
    )


def _device(args: argparse.Namespace, recorded: dict[str, Any] | None) -> str:
    """The kind of device the ranks train on: the run's recorded one, or the config's."""
    if recorded is not None:
        return str(recorded.get("environment", {}).get("device", "cpu"))
    if args.command != "train":
        return "cpu"  # the command itself reports what is wrong with the run
    from esper_es.config import load_config
    from esper_es.runtime.device import device_kind

    return device_kind(load_config(args.config).runtime.device)


def _recorded_run(db_path: str) -> dict[str, Any] | None:
    """The run's `RunStarted` payload (None if it cannot be read here)."""
    from esper_es.errors import EsperError
    from esper_es.store.backends import open_store

    try:
        with open_store(db_path, readonly=True) as db:
            for rec in db.read(branch=None, types=["RunStarted"]):
                return dict(rec.payload)
    except (EsperError, OSError, ValueError):
        return None  # the command itself reports what is wrong with the file
    return None
