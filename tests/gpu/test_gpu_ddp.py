"""The GPU check of SPEC §11 (skipped without CUDA): NCCL ranks train bit for bit, twice.

What it proves on a GPU machine: the rank layer (`esper_es.runtime.ranks`) selects NCCL for
CUDA devices, moves its messages and gradient buckets through it, and with the deterministic
CUDA settings that `RunStarted` records (`CUBLAS_WORKSPACE_CONFIG`, deterministic algorithms,
cuDNN deterministic and not benchmarking, no TF32) the same training on the same world size
gives the same bits on every rank and from run to run. One rank per GPU (NCCL refuses two
ranks on one device): with one GPU it runs one NCCL rank.

What it does not prove: the esper-es trainer builds its hosts and data on the CPU, so a whole
`esper-es train --nproc N` does not yet run on GPUs (docs/scale-out.md).

    CUBLAS_WORKSPACE_CONFIG=:4096:8 .venv/bin/python -m pytest tests/gpu -q
"""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


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
