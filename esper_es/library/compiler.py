"""Background compilation of kernels (the seed documents' Tezzeret), off by default.

`BackgroundCompiler.request(seed, kernel)` hands a kernel to one worker thread, which wraps its
body in `torch.compile(dynamic=True)` and warms it up on a synthetic activation of the kernel's
shape kind (forward, then `autograd.grad` with respect to the input only, so no `.grad` of the
live parameters is touched): the compile happens there, and training goes on with the eager
kernel meanwhile. `ready()` returns the kernels whose compiled form is done; the trainer records
a `KernelCompiled` fact for each at its next step boundary and `install`s the compiled form when
that event is projected. So the switch happens at a recorded seq, and replay, which projects the
same event at the same seq, switches there too (compiling synchronously).

Why at a recorded boundary: compiled kernels are *not* bit-identical to eager ones on CPU
(inductor fuses and reorders float operations: measured differences of ~1e-8 in outputs and
~1e-5 in gradients for mlp, conv3x3 and norm; see bench/compile_kernels.py), so the step at
which a kernel switches is part of what a run computed.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch import Tensor

from esper_es.nn.kernels import Kernel

BACKEND = "inductor"


def example_activation(kernel: Kernel, batch: int = 2, length: int = 8) -> Tensor:
    """A small synthetic activation of the kernel's shape kind and width."""
    c = kernel.spec.channels
    shape = {"image": (batch, c, length, length), "sequence": (batch, length, c)}.get(
        kernel.spec.shape_kind, (batch, c)
    )
    dtype = next((p.dtype for p in kernel.parameters()), torch.float32)
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)


def compile_kernel(kernel: Kernel, *, warm: bool = True) -> Callable[[Tensor], Tensor]:
    """The compiled form of `kernel`'s body, compiled now (warm) rather than at its first call."""
    compiled: Callable[[Tensor], Tensor] = torch.compile(kernel.body, dynamic=True)
    if warm:
        x = example_activation(kernel).requires_grad_(True)
        y = compiled(x)
        torch.autograd.grad(y.square().sum(), x)
    return compiled


def _forward(compiled: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    return compiled(x)


def install(kernel: Kernel, compiled: Callable[[Tensor], Tensor]) -> None:
    """Make `kernel` run `compiled` (its parameters and state_dict are unchanged)."""
    # A partial, not the compiled module itself: assigning a Module would register it as a
    # submodule and change the state_dict (and so the fingerprint).
    kernel.forward = functools.partial(_forward, compiled)  # type: ignore[method-assign]
    kernel.compiled = True  # type: ignore[assignment]


def is_compiled(kernel: Kernel) -> bool:
    """Whether `install` switched this kernel."""
    return bool(getattr(kernel, "compiled", False))


@attrs.frozen
class Compiled:
    """A finished compile: which seed and kernel, the callable, and how long it took."""

    seed: str
    kernel_id: str
    fn: Callable[[Tensor], Tensor]
    seconds: float


class BackgroundCompiler:
    """Compiles kernels in one worker thread; training never waits for it."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tezzeret")
        self._pending: dict[str, concurrent.futures.Future[Compiled]] = {}
        self._lock = threading.Lock()

    def request(self, seed: str, kernel: Kernel) -> None:
        """Start compiling `kernel` (replacing any pending request for `seed`)."""

        def work() -> Compiled:
            t = time.perf_counter()
            fn = compile_kernel(kernel)
            return Compiled(seed, kernel.kernel_id, fn, time.perf_counter() - t)

        with self._lock:
            self._pending[seed] = self._pool.submit(work)

    def forget(self, seed: str) -> None:
        """Drop `seed`'s request (its kernel was freed)."""
        with self._lock:
            fut = self._pending.pop(seed, None)
        if fut is not None:
            fut.cancel()

    def ready(self) -> list[Compiled]:
        """The finished compiles, in seed order, removed from the pending set (failures dropped)."""
        with self._lock:
            done = sorted(s for s, f in self._pending.items() if f.done())
            futures = [self._pending.pop(s) for s in done]
        out = []
        for f in futures:
            if not f.cancelled() and f.exception() is None:
                out.append(f.result())
        return out

    def wait(self, timeout: float | None = None) -> None:
        """Block until every pending compile finished (tests, shutdown)."""
        with self._lock:
            futures = list(self._pending.values())
        concurrent.futures.wait(futures, timeout=timeout)

    def close(self) -> None:
        """Stop the worker (pending compiles are abandoned)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def describe(c: Compiled) -> dict[str, Any]:
    """The `KernelCompiled` fields of a finished compile (step added by the trainer)."""
    return {
        "seed": c.seed,
        "kernel_id": c.kernel_id,
        "backend": BACKEND,
        "compile_seconds": round(c.seconds, 6),
    }
