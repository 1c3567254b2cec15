"""Gradient isolation (L8): a seed in TRAINING learns from the task but cannot touch the host.

The kernel reads a detached copy of the host activation, so no gradient flows from the kernel
into the host. Its output joins the graph through `isolated`, whose forward returns the host
activation's exact bits (a clone, so signed zeros, infinities and NaN payloads are untouched,
and later in-place ops stay legal) and whose backward hands the incoming gradient unchanged
both to the host (as if the seed were absent) and to the kernel (as if it were blended at full
weight). A straight-through sum `x + (k - k.detach())` would not do: it turns -0.0 into +0.0
and lets a non-finite kernel output poison the host's forward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class _Isolated(torch.autograd.Function):
    """Forward: the host activation. Backward: its gradient, to the host and to the kernel."""

    @staticmethod
    def forward(ctx: Any, host: Tensor, delta: Tensor) -> Tensor:
        """Return the host activation's exact bits, ignoring `delta`."""
        return host.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        """Pass `grad` through unchanged to both inputs."""
        return grad, grad


def isolated(host: Tensor, delta: Tensor) -> Tensor:
    """`host`, bit for bit, with `delta` attached so that it receives `host`'s gradient."""
    if delta.shape != host.shape:
        raise ValueError(f"kernel output shape {tuple(delta.shape)} != {tuple(host.shape)}")
    out: Tensor = _Isolated.apply(host, delta)  # type: ignore[no-untyped-call]
    return out
