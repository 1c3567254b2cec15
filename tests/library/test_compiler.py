"""Background compilation: variants, the dispatching forward, the worker's bit-identity check."""

from __future__ import annotations

import copy
import os
import time

import pytest
import torch

from esper_es.core.upcasting import upcast
from esper_es.library.compile_worker import _check
from esper_es.library.compiler import (
    BackgroundCompiler,
    Compiled,
    Variant,
    attach,
    install,
    is_compiled,
)
from esper_es.nn.fingerprint import model_fingerprint
from esper_es.nn.kernels import build_kernel


def _x(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_a_variant_is_the_exact_call_shape_dtype_grad_mode_and_train_flag() -> None:
    kernel = build_kernel("mlp", "image", 4, 3)
    d = attach(kernel)
    x = _x(32, 4, 8, 8)
    train = d.variant(x.requires_grad_(True))
    assert train == Variant((32, 4, 8, 8), "float32", True, True, True, True)
    with torch.no_grad():
        kernel.eval()
        # Without grad mode, whether tensors require grad is no part of the variant.
        assert d.variant(x) == Variant((32, 4, 8, 8), "float32", False, False, False, False)
    assert d.variant(_x(2, 8, 8, 4).permute(0, 3, 1, 2)) is None  # non-contiguous: eager
    assert Variant.from_dict(train.to_dict()) == train


def test_dispatch_runs_installed_variants_compiled_and_everything_else_eager() -> None:
    kernel = build_kernel("lora", "image", 4, 11)
    before = model_fingerprint(kernel)
    d = attach(kernel)
    assert attach(kernel) is d and model_fingerprint(kernel) == before
    x = _x(32, 4, 8, 8)
    with torch.no_grad():
        kernel(x)
    (seen,) = d.take_seen()
    calls: list[torch.Tensor] = []

    def artifact(inp: torch.Tensor) -> tuple[torch.Tensor]:
        calls.append(inp)
        return (kernel.body(inp),)

    install(kernel, Compiled("l/0", kernel.kernel_id, seen, 0.1, True, "", artifact, ("",)))
    assert is_compiled(kernel, seen) and model_fingerprint(kernel) == before
    with torch.no_grad():
        y = kernel(x)
    assert len(calls) == 1 and torch.equal(y, kernel.body(x))
    y = kernel(x.clone().requires_grad_(True))  # the training variant: not installed, eager
    assert len(calls) == 1 and d.take_seen() == {d.variant(x.clone().requires_grad_(True))}
    assert d.calls == {"compiled": 1, "eager": 2}
    with pytest.raises(ValueError, match="not bit-identical"):
        install(kernel, Compiled("l/0", kernel.kernel_id, seen, 0.1, False, "x", None, ("",)))


def test_a_deep_copy_runs_its_own_parameters_eagerly() -> None:
    kernel = build_kernel("lora", "image", 4, 11)
    d = attach(kernel)
    x = _x(32, 4, 8, 8)
    with torch.no_grad():
        kernel(x)
    (seen,) = d.take_seen()
    install(kernel, Compiled("l/0", kernel.kernel_id, seen, 0.1, True, "", kernel.body, ("",)))
    twin = copy.deepcopy(kernel)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(1.0)
        assert twin.dispatch.kernel is twin and not twin.dispatch.compiled  # type: ignore[attr-defined]
        assert torch.equal(twin(x), twin.body(x)) and not torch.equal(twin(x), kernel(x))


def test_the_workers_check_finds_a_difference_in_outputs_or_gradients() -> None:
    body = build_kernel("mlp", "vector", 6, 2).body
    order = ["", *(n for n, _ in body.named_parameters())]
    params = dict(body.named_parameters())

    def same(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(body, dict(zip(params, ps, strict=True)), (x,))

    def nudged(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return same(x, *ps) * (1 + 2**-20)

    def grad_off(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        y = same(x, *ps)
        return y + (y - y.detach()) * 2**-20  # same values, different gradients

    args = (order, (5, 6), torch.float32)
    assert _check(body, same, *args, grad=True, input_grad=True) == (True, "")
    assert _check(body, nudged, *args, grad=False, input_grad=False) == (False, "forward output")
    ok, why = _check(body, grad_off, *args, grad=True, input_grad=True)
    assert not ok and why.startswith("gradient of")


def test_kernel_compiled_v1_upcasts_to_a_switch_without_variant() -> None:
    v1 = {"seed": "l/0", "kernel_id": "k-1", "step": 4, "backend": "inductor",
          "compile_seconds": 1.0}  # fmt: skip
    version, payload = upcast("KernelCompiled", 1, v1)
    assert version == 2 and payload == {**v1, "variant": None}


@pytest.mark.slow
def test_worker_compiles_lora_bit_identically_and_rejects_what_differs() -> None:
    lora = build_kernel("lora", "image", 4, 11)
    mlp = build_kernel("mlp", "image", 4, 11)
    x = _x(32, 4, 8, 8)
    train = attach(lora).variant(x.clone().requires_grad_(True))
    assert train is not None
    compiler = BackgroundCompiler()
    try:
        done = {c.kernel_id: c for c in (compiler.compile_now(k, train) for k in (lora, mlp))}
    finally:
        compiler.close()
    assert done[lora.kernel_id].identical, done[lora.kernel_id].why
    # mlp's GELU and bias are fused by inductor: gradients differ in the last bits.
    assert not done[mlp.kernel_id].identical and done[mlp.kernel_id].why
    install(lora, done[lora.kernel_id])
    twin = build_kernel("lora", "image", 4, 11)
    y, y_twin = lora(x.clone().requires_grad_(True)), twin(x.clone().requires_grad_(True))
    assert lora.dispatch.calls["compiled"] == 1  # type: ignore[attr-defined]
    y.square().sum().backward()
    y_twin.square().sum().backward()
    assert torch.equal(y, y_twin)
    for p, q in zip(lora.parameters(), twin.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None and torch.equal(p.grad, q.grad)


def _adam_steps() -> torch.Tensor:
    p = torch.nn.Parameter(torch.linspace(-1, 1, 64))
    opt = torch.optim.Adam([p], lr=0.01)
    for i in range(3):
        p.grad = torch.sin(p.detach() * (i + 1))
        opt.step()
    return p.detach().clone()


def test_compiles_run_in_another_process() -> None:
    compiler = BackgroundCompiler()
    try:
        deadline = time.monotonic() + 120
        while compiler.worker_pid is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert compiler.worker_pid is not None and compiler.worker_pid != os.getpid()
    finally:
        compiler.close()


@pytest.mark.slow
def test_a_compile_in_progress_changes_nothing_the_training_thread_computes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The cause of the replay failures (issue 9.4): a compile in this process held
    # torch.compiler.is_compiling() True for every thread, and Adam then rounded differently.
    reference = _adam_steps()
    kernel = build_kernel("lora", "image", 4, 5)
    variant = attach(kernel).variant(_x(8, 4, 8, 8).requires_grad_(True))
    assert variant is not None
    # This thread keeps a core busy; at the default lowest priority the worker could starve.
    monkeypatch.setattr(BackgroundCompiler, "nice", 0)
    compiler = BackgroundCompiler()
    try:
        compiler.request("l/0", kernel, variant)
        steps, done, deadline = 0, [], time.monotonic() + 300
        while not done and time.monotonic() < deadline:
            assert not torch.compiler.is_compiling()
            assert torch.equal(_adam_steps(), reference), f"after {steps} steps"
            steps += 1
            done = compiler.ready()
        assert compiler.failures() == []
    finally:
        compiler.close()
    assert done and done[0].identical, "the compile finished while this thread kept stepping"
