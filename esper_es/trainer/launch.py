"""Starting the ranks of a data-parallel run (SPEC §11): `--nproc N` here, or `torchrun`.

`run_ranks(nproc, lead, build)` runs `lead` (a whole command: train, replay, resume,
rollback) as rank 0 and a `Follower` on every other rank:

- Launched by `torchrun` (or any launcher that sets `RANK`, `WORLD_SIZE`, `MASTER_ADDR`,
  `MASTER_PORT`), this process is the rank the environment names, on one machine or several;
  the group meets through `env://`.
- Otherwise, with `nproc > 1`, this process becomes rank 0 and forks `nproc - 1` followers
  before anything trained (no torch thread pool exists yet, so forking is safe and costs no
  second start-up); they meet through a file in a private temporary directory. The command's
  output and exit code are rank 0's. Ctrl-C reaches every process of the terminal: followers
  ignore it and stop when rank 0, which stops cleanly at a boundary, tells them to.

Rank 0 always tells the followers to stop when its command ends, also when it failed; a
follower that finds rank 0 gone (`RankLost`) exits 1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esper_es.errors import EsperError, RankLost, WorldSizeError
from esper_es.runtime import ranks
from esper_es.runtime.ranks import RankGroup
from esper_es.trainer.distributed import Follower, TrainerBuilder, stop_followers

if TYPE_CHECKING:
    from esper_es.trainer.loop import Trainer


def run_ranks(
    nproc: int | None,
    lead: Callable[[], int],
    build: TrainerBuilder,
    device: str = "cpu",
    recorded_backend: str | None = None,
) -> int:
    """Run `lead` as rank 0 of `nproc` ranks (or of torchrun's world); its exit code.

    `device` is the kind the run trains on: "cuda" makes an NCCL group, one GPU per rank.
    `recorded_backend`: the backend of the run a command re-executes, which decides how the
    gradients are reduced (`ranks.local_reduction`).
    """
    world = ranks.torchrun_world()
    if world is not None:
        rank, size = world
        if nproc is not None and nproc != size:
            raise WorldSizeError(f"--nproc {nproc} differs from torchrun's WORLD_SIZE {size}")
        if size > 1:
            group = RankGroup.initialize(
                rank, size, device=device, local=ranks.ranks_on_this_machine(size),
                recorded_backend=recorded_backend,
            )  # fmt: skip
            return _lead(group, lead) if rank == 0 else _follow(group, build)
    if nproc is None or nproc <= 1:
        return lead()
    rendezvous = Path(tempfile.mkdtemp(prefix="esper-es-ranks-"))
    init = (rendezvous / "store").as_uri()
    children = []
    where: dict[str, Any] = {"device": device, "local": True, "recorded_backend": recorded_backend}
    try:
        for rank in range(1, nproc):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child's coverage is not collected
                code = 1
                try:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                    # Forked ranks share this machine: each its own GPU (`resolve_device`).
                    os.environ["LOCAL_RANK"] = str(rank)
                    group = RankGroup.initialize(rank, nproc, init_method=init, **where)
                    code = _follow(group, build)
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            children.append(pid)
        code = _lead(RankGroup.initialize(0, nproc, init_method=init, **where), lead)
    finally:
        codes = [_wait(pid) for pid in children]
        shutil.rmtree(rendezvous, ignore_errors=True)
    failed = [(r, c) for r, c in enumerate(codes, start=1) if c != 0]
    if code == 0 and failed:
        rank, why = failed[0]
        raise RankLost(rank, nproc, f"rank {rank} exited with {why}")
    return code


def trainer_builder(factory: str | None = None) -> TrainerBuilder:
    """How a follower builds the trainer rank 0 announces: the run's recorded host (a built-in
    task, or the factory import path a custom host recorded), or `factory` if given."""

    def build(boot: dict[str, Any]) -> Trainer:
        from esper_es.config import config_from_dict
        from esper_es.core import events as ev
        from esper_es.replay.factory import resolve_factory, run_factory
        from esper_es.runtime.device import recorded_device

        seed = int(boot["master_seed"])
        if factory:
            make = run_factory(factory)
        else:
            started = ev.RunStarted(run_id="", master_seed=seed, config={}, host=boot["host"])
            make = resolve_factory(started)
        # On rank 0's kind of device, whatever `auto` would pick here.
        with recorded_device(boot.get("device")):
            return make(config_from_dict(boot["config"]), seed, Path(os.devnull))

    return build


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _lead(group: RankGroup, lead: Callable[[], int]) -> int:
    try:
        with ranks.active(group):
            return lead()
    finally:
        # Whatever happened to the command, the followers must leave their loop; if they
        # are gone already (a lost rank), there is no one to tell.
        with contextlib.suppress(RankLost):
            stop_followers(group)
        group.close()


def _follow(group: RankGroup, build: TrainerBuilder) -> int:
    try:
        return Follower.serve(group, build)
    except EsperError as exc:
        print(f"esper-es (rank {group.rank}): {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception:
        # A bug, not a user error: the follower exits with `os._exit`, which would lose it.
        print(f"esper-es (rank {group.rank}): unexpected error", file=sys.stderr)
        traceback.print_exc()
        return 1
    finally:
        group.close()
