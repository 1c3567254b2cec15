"""Where a run trains (SPEC §11): `[runtime] device` = "cpu", "cuda" or "auto".

`resolve_device` turns the config's choice into a `torch.device`: "auto" is CUDA where it is
available, else the CPU; "cuda" where CUDA is absent is a config error (exit 2). Each rank of a
data-parallel run takes its own GPU, `cuda:{LOCAL_RANK}` (one NCCL rank per device).

A re-execution (replay, resume, rollback) and a follower rank do not choose: they train on the
kind of device the run recorded (`RunStarted.environment.device`), which `recorded_device`
imposes while their trainer is built. So "auto" cannot move a CPU run onto a GPU machine's
GPU, where its bits would differ; a CUDA run on a machine without CUDA is refused before
anything trains (`check_environment`, exit 4).

`cuda_determinism` puts in force what makes CUDA kernels reproducible, before the first CUDA
operation (cuBLAS reads `CUBLAS_WORKSPACE_CONFIG` when it creates its handle); the settings
land in `RunStarted.environment` through `capture_environment(device)`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from esper_es.errors import ConfigError, EnvironmentMismatch
from esper_es.runtime import ranks

#: What `[runtime] device` may say.
DEVICES = ("cpu", "cuda", "auto")
#: The cuBLAS workspace setting that makes its reductions deterministic (NVIDIA's documented
#: choice; ":16:8" also works, slower).
CUBLAS_WORKSPACE = ":4096:8"

_recorded: str | None = None


def cuda_available() -> bool:
    """Whether this process can train on a GPU (asked through NVML where it can be, so that
    asking does not initialise CUDA before `--nproc` forks its ranks)."""
    return torch.cuda.device_count() > 0


def device_kind(wanted: str) -> str:
    """The kind of device, "cpu" or "cuda", that `wanted` resolves to here (no CUDA context)."""
    if wanted not in DEVICES:
        raise ConfigError("runtime.device", f"must be one of {', '.join(DEVICES)}, got {wanted!r}")
    kind = _recorded or wanted
    if kind == "auto":
        return "cuda" if cuda_available() else "cpu"
    return kind


def resolve_device(wanted: str, local_rank: int | None = None) -> torch.device:
    """The device a run whose config says `wanted` trains on, here, as rank `local_rank`.

    A rank of a process group on a GPU trains on the group's device; otherwise rank
    `local_rank` (default: `LOCAL_RANK`, else 0) takes `cuda:{local_rank}`.
    """
    kind = device_kind(wanted)
    if kind == "cpu":
        return torch.device("cpu")
    if not cuda_available():
        if _recorded is not None:
            raise EnvironmentMismatch([("device", kind, "cpu")], hint="CUDA is not available here")
        raise ConfigError("runtime.device", "is 'cuda', but CUDA is not available here")
    group = ranks.current()
    if group is not None and group.device.type == "cuda":
        return group.device
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device("cuda", local_rank)


def training_device(wanted: str, deterministic: bool) -> torch.device:
    """`resolve_device`, with `cuda_determinism` in force before anything touches a GPU."""
    device = resolve_device(wanted)
    if device.type == "cuda":
        if deterministic:
            cuda_determinism()
        # The current device is the one this process's CUDA RNG state is taken from.
        torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def recorded_device(kind: str | None) -> Iterator[None]:
    """Within: every `resolve_device` gives a device of `kind` (the run's recorded one)."""
    global _recorded
    previous, _recorded = _recorded, kind
    try:
        yield
    finally:
        _recorded = previous


def cuda_determinism() -> None:
    """Deterministic CUDA: the cuBLAS workspace, deterministic cuDNN, no TF32.

    `CUBLAS_WORKSPACE_CONFIG` is set only where the user did not set it: a value of their own
    is theirs to choose, and is recorded (and compared on replay) either way.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def to_device(value: Any, device: torch.device) -> Any:
    """`value` with every tensor in it (tuples, lists, dicts) on `device`; the rest as is."""
    if isinstance(value, Tensor):
        return value if value.device == device else value.to(device)
    if isinstance(value, tuple):
        return tuple(to_device(v, device) for v in value)
    if isinstance(value, list):
        return [to_device(v, device) for v in value]
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    return value
