"""The GPU check of SPEC §11 (skipped without CUDA): esper-es trains on GPUs bit for bit.

Two parts. First, the whole command line on GPUs: `esper-es train` with `[runtime] device =
"cuda"` on one GPU, then `replay` of it, must reproduce every checkpoint's fingerprint, and
`RunStarted` must record the device and the deterministic CUDA settings; with two or more GPUs
the same on 2 NCCL ranks (`--nproc 2`, one GPU each). Second, the rank layer alone: the rank
layer (`esper_es.runtime.ranks`) selects NCCL for
CUDA devices, moves its messages and gradient buckets through it, and with the deterministic
CUDA settings that `RunStarted` records (`CUBLAS_WORKSPACE_CONFIG`, deterministic algorithms,
cuDNN deterministic and not benchmarking, no TF32) the same training on the same world size
gives the same bits on every rank and from run to run. One rank per GPU (NCCL refuses two
ranks on one device): with one GPU it runs one NCCL rank.

Not yet run on a GPU: none was available to the work that wrote it (docs/scale-out.md).

    .venv/bin/python -m pytest tests/gpu -q
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

REPO = Path(__file__).resolve().parents[2]
#: A short default run on the GPU: 3 epochs, the controller on, so seeds germinate and their
#: kernels are built on the device by the projector.
CUDA_RUN = """
[train]
epochs = 3
controller_every_steps = 8

[runtime]
device = "cuda"
"""


def esper(*argv: object) -> dict[str, Any]:
    """`esper-es ARGV --json` in a subprocess (it must succeed): its JSON object."""
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    done = subprocess.run(
        [sys.executable, "-m", "esper_es.cli.main", *map(str, argv), "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def _log(db: Path, kind: str) -> list[dict[str, Any]]:
    from esper_es.store.database import RunDatabase

    with RunDatabase.open(db, readonly=True) as rdb:
        return [dict(r.payload) for r in rdb.read(branch=None, types=[kind])]


def _train_and_replay(tmp_path: Path, nproc: int) -> None:
    config = tmp_path / "cuda.toml"
    config.write_text(CUDA_RUN, encoding="utf-8")
    db = tmp_path / "run.db"
    trained = esper("train", "--config", config, "--db", db, "--nproc", nproc)
    (started,) = _log(db, "RunStarted")
    env = started["environment"]
    assert env["device"] == "cuda" and env["cuda_device_name"]
    assert env["deterministic_algorithms"] is True
    assert env["cudnn_deterministic"] is True and env["cudnn_benchmark"] is False
    assert env["cudnn_allow_tf32"] is False and env["cuda_matmul_allow_tf32"] is False
    # Set by the trainer before its first CUDA operation (the test removed the user's own).
    assert env["numerics_env"]["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert (started["world_size"], started["backend"]) == (
        (1, None) if nproc == 1 else (nproc, "nccl")
    )
    assert _log(db, "SeedGerminated"), "no kernel was built on the GPU"
    esper("verify", db)
    replayed = esper("replay", db)
    assert replayed["fingerprint"] == trained["fingerprint"]
    assert replayed["checkpoints_checked"] == len(_log(db, "Checkpointed"))


def test_one_gpu_train_replays_bit_for_bit(tmp_path: Path) -> None:
    _train_and_replay(tmp_path, 1)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_nccl_ranks_train_and_replay_bit_for_bit(tmp_path: Path) -> None:
    _train_and_replay(tmp_path, 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train(rank: int, world: int, port: int, out: Any) -> None:
    """One rank: a small CNN, 20 steps on its shard, NCCL all-reduce of the gradients."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    from esper_es.nn.fingerprint import model_fingerprint
    from esper_es.runtime.environment import capture_environment, configure_determinism
    from esper_es.runtime.ranks import RankGroup

    configure_determinism()
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    group = RankGroup.initialize(rank, world, device="cuda")
    try:
        device = group.device
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64 * world, 1, 8, 8, generator=g)
        y = torch.randint(0, 4, (64 * world,), generator=g)
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 4),
        ).to(device)  # fmt: skip
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        mine = torch.arange(rank, len(x), world)
        for step in range(20):
            batch = mine[(step * 16) % len(mine) :][:16]
            opt.zero_grad(set_to_none=True)
            logits = model(x[batch].to(device))
            loss = torch.nn.functional.cross_entropy(logits, y[batch].to(device))
            loss.backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            group.all_reduce_mean([*grads, *(b for b in model.buffers() if b.is_floating_point())])
            opt.step()
        if rank == 0:
            group.send({"op": "done", "records": []}, b"fingerprints follow")
        else:
            header, blob = group.receive()
            assert header["op"] == "done" and blob == b"fingerprints follow"
        digests = group.all_gather_bytes(model_fingerprint(model.cpu()).encode("ascii"))
        env = capture_environment(device)
        out.put((rank, group.backend, [d.decode("ascii") for d in digests], env))
    finally:
        group.close()


def _run(world: int) -> list[tuple[int, str, list[str], dict[str, Any]]]:
    ctx = torch.multiprocessing.get_context("spawn")
    out = ctx.SimpleQueue()
    torch.multiprocessing.start_processes(
        _train, args=(world, _free_port(), out), nprocs=world, start_method="spawn"
    )
    return sorted(out.get() for _ in range(world))


def test_nccl_ranks_agree_and_repeat_bit_for_bit() -> None:
    world = min(2, torch.cuda.device_count())
    first, second = _run(world), _run(world)
    for rank, backend, digests, env in first:
        assert backend == "nccl"
        assert len(set(digests)) == 1, f"rank {rank}: ranks differ {digests}"
        assert env["device"] == "cuda" and env["cuda_device_name"]
        assert env["cudnn_deterministic"] is True and env["cudnn_benchmark"] is False
        assert env["numerics_env"]["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert [d for _, _, d, _ in first] == [d for _, _, d, _ in second]
