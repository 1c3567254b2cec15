"""Device placement (SPEC §11): `[runtime] device` resolved, imposed on re-execution, applied.

No GPU here: CUDA's presence is faked where only the decision is tested (`device_count`), and
moving tensors is tested on the `meta` device, which allocates nothing.
"""

from __future__ import annotations

import os

import pytest
import torch

from esper_es.errors import ConfigError, EnvironmentMismatch
from esper_es.runtime import device as dev
from esper_es.runtime.environment import capture_environment, check_environment


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_cpu_is_cpu_and_auto_is_cpu_without_cuda(no_gpu: None) -> None:
    assert dev.resolve_device("cpu") == torch.device("cpu")
    assert dev.resolve_device("auto") == torch.device("cpu")
    assert dev.device_kind("auto") == "cpu"


def test_cuda_without_cuda_is_a_config_error(no_gpu: None) -> None:
    with pytest.raises(ConfigError) as caught:
        dev.resolve_device("cuda")
    assert caught.value.exit_code == 2
    assert "CUDA is not available" in str(caught.value)


def test_an_unknown_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        dev.resolve_device("tpu")
    assert "runtime.device" in str(caught.value)


def test_auto_takes_the_gpu_of_its_local_rank(
    fake_gpus: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dev.resolve_device("auto") == torch.device("cuda", 1)
    assert dev.resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    monkeypatch.delenv("LOCAL_RANK")
    assert dev.resolve_device("cuda") == torch.device("cuda", 0)


def test_a_recorded_cpu_run_stays_on_the_cpu_where_a_gpu_is(fake_gpus: None) -> None:
    with dev.recorded_device("cpu"):
        assert dev.resolve_device("auto") == torch.device("cpu")
        assert dev.device_kind("cuda") == "cpu"
    assert dev.resolve_device("auto").type == "cuda"


def test_a_recorded_cuda_run_without_cuda_is_an_environment_mismatch(no_gpu: None) -> None:
    with dev.recorded_device("cuda"), pytest.raises(EnvironmentMismatch) as caught:
        dev.resolve_device("auto")
    assert caught.value.exit_code == 4
    assert caught.value.differences == (("device", "cuda", "cpu"),)


def test_a_recorded_cuda_environment_is_refused_on_a_cpu_only_machine(no_gpu: None) -> None:
    recorded = {
        **capture_environment("cpu"),
        "device": "cuda",
        "cuda_device_name": "NVIDIA H200",
        "cudnn_deterministic": True,
    }
    with pytest.raises(EnvironmentMismatch) as caught:
        check_environment(recorded)
    fields = [d[0] for d in caught.value.differences]
    assert "device" in fields and "cuda_device_name" in fields


def test_cuda_determinism_sets_what_makes_cuda_reproducible(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    flags = (torch.backends.cudnn, ("deterministic", "benchmark", "allow_tf32"))
    saved = {n: getattr(flags[0], n) for n in flags[1]}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.benchmark = True
        dev.cuda_determinism()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == dev.CUBLAS_WORKSPACE
        assert torch.backends.cudnn.deterministic is True
        assert torch.backends.cudnn.benchmark is False
        assert torch.backends.cudnn.allow_tf32 is False
        assert torch.backends.cuda.matmul.allow_tf32 is False
        env = capture_environment("cpu")
        assert env["numerics_env"]["CUBLAS_WORKSPACE_CONFIG"] == dev.CUBLAS_WORKSPACE
        # A user's own setting is kept (and recorded).
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
        dev.cuda_determinism()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    finally:
        for name, value in saved.items():
            setattr(torch.backends.cudnn, name, value)
        torch.backends.cuda.matmul.allow_tf32 = tf32


def test_to_device_moves_every_tensor_of_a_batch_and_keeps_the_rest() -> None:
    meta = torch.device("meta")
    x, y = torch.ones(2, 3), torch.tensor([1, 0])
    moved = dev.to_device({"batch": (x, [y, "label"]), "n": 2}, meta)
    assert moved["batch"][0].device == meta and moved["batch"][0].shape == (2, 3)
    assert moved["batch"][1][0].device == meta and moved["batch"][1][1] == "label"
    assert moved["n"] == 2
    # Already there: the very same tensor, no copy.
    assert dev.to_device(x, torch.device("cpu")) is x
    assert dev.to_device(None, meta) is None


def test_the_cuda_rng_state_is_this_processs_gpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each rank trains on one GPU and every rank must hold rank 0's state: the state of the
    # current device is captured and restored, never every visible GPU's (which would make
    # contexts on all of them and compare GPUs a rank never uses).
    from esper_es.runtime import rng

    state = torch.arange(16, dtype=torch.uint8)
    restored: list[torch.Tensor] = []

    def every_gpu() -> None:
        raise AssertionError("every GPU's state was asked for")

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: state)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", every_gpu)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s: restored.append(s))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", every_gpu)
    captured = rng.capture_rng_state()
    assert captured["torch_cuda"] == [bytes(range(16))]
    assert list(rng.digest_of(captured)) == ["torch_cpu", "python", "numpy", "torch_cuda:0"]
    rng.restore_rng_state(captured)
    assert [bytes(t.numpy().tobytes()) for t in restored] == [bytes(range(16))]
