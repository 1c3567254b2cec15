"""The compile process (`python -m esper_es.library.compile_worker`): compiles kernel variants.

Why a separate process: a compile inside the training process changes process-wide state that
the training thread reads. Measured on torch 2.13 (docs/kernel-library.md): dynamo holds
`torch.compiler.is_compiling()` True for the whole compile, from any thread, and
`torch.optim.Adam` then computes its bias correction with tensors instead of Python floats, so
every optimizer step that overlaps a compile rounds differently (three of three default runs
failed replay this way before any kernel switched); dynamo and AOTAutograd also save and
restore the global RNG around a compile, undoing draws the training thread made meanwhile.
Here nothing is shared: the training process only loads the finished artifact.

Protocol: one JSON object per line on stdin (a request), one per line on stdout (its result);
no pickle crosses the pipe. A request names the kernel's recipe (blueprint, config, shape
kind, channels, init seed), the call variant (`compiler.Variant`), the thread count and where
to save the artifact. The worker builds the kernel from its recipe, captures the body's graph
with dynamo for exactly that variant, compiles it with inductor (`standalone_compile`), saves
it, loads the saved artifact back and checks it against the eager body on random weights and
inputs: the result says whether outputs and gradients were bit-identical.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

#: Random (weights, input) draws each compiled variant is checked on.
CHECKS = 3


def _set_up(threads: int) -> None:
    import torch

    from esper_es.runtime.environment import configure_determinism, sync_compiler_determinism

    torch.set_num_threads(threads)
    configure_determinism()
    # Imported before answering "ready", so that the first request pays only its compile.
    import torch._inductor.standalone_compile

    sync_compiler_determinism()


def compile_variant(request: dict[str, Any]) -> dict[str, Any]:
    """Compile, save and check one variant; the result line (without the request id)."""
    import torch
    from torch._inductor import standalone_compile
    from torch._inductor.standalone_compile import CompiledArtifact

    from esper_es.nn.kernels import build_kernel

    started = time.perf_counter()
    kernel = build_kernel(
        request["blueprint"],
        request["shape_kind"],
        int(request["channels"]),
        int(request["init_seed"]),
        request["config"],
    )
    body = kernel.body
    body.train(bool(request["training"]))
    shape = tuple(int(s) for s in request["shape"])
    dtype = getattr(torch, request["dtype"])
    grad, input_grad = bool(request["grad"]), bool(request["input_grad"])
    for p in body.parameters():
        p.requires_grad_(bool(request["params_grad"]))
    captured: dict[str, Any] = {}

    def capture(gm: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> Any:
        captured["gm"], captured["inputs"] = gm, inputs
        return gm

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    with torch.set_grad_enabled(grad):
        torch.compile(body, backend=capture, fullgraph=True, dynamic=False)(
            x.requires_grad_(input_grad)
        )
        names = {id(p): n for n, p in body.named_parameters()}
        order = [names.get(id(t), "") for t in captured["inputs"]]
        if order.count("") != 1:
            raise RuntimeError(f"unexpected graph inputs {order}")
        artifact = standalone_compile(
            captured["gm"], captured["inputs"], dynamic_shapes="from_example_inputs"
        )
        artifact.save(path=request["path"], format="binary")
    seconds = time.perf_counter() - started
    loaded = CompiledArtifact.load(path=request["path"], format="binary")
    identical, why = _check(body, loaded, order, shape, dtype, grad, input_grad)
    return {"order": order, "seconds": seconds, "identical": identical, "why": why}


def _check(
    body: Any,
    loaded: Any,
    order: list[str],
    shape: tuple[int, ...],
    dtype: Any,
    grad: bool,
    input_grad: bool,
) -> tuple[bool, str]:
    """Whether the loaded artifact and the eager body agree bit for bit (and if not, where)."""
    import torch

    params = dict(body.named_parameters())
    for k in range(CHECKS):
        gen = torch.Generator().manual_seed(1000 + k)
        with torch.no_grad():
            # Random weights: a delta kernel's output layer starts at zero, which would make
            # its outputs and most gradients trivially equal.
            for p in params.values():
                p.copy_(torch.randn(p.shape, generator=gen).to(p.dtype))
        x = torch.randn(*shape, generator=gen).to(dtype)
        with torch.set_grad_enabled(grad):
            xe = x.clone().requires_grad_(input_grad)
            xc = x.clone().requires_grad_(input_grad)
            eager = body(xe)
            out = loaded(*[xc if n == "" else params[n] for n in order])
            compiled = out[0] if isinstance(out, tuple | list) else out
            if not torch.equal(eager, compiled):
                return False, "forward output"
            wrt = [t for t in [*params.values()] if t.requires_grad]
            if not (grad and (wrt or input_grad)):
                continue
            seed = torch.randn(eager.shape, generator=gen).to(dtype)
            ge = torch.autograd.grad(eager, [xe, *wrt] if input_grad else wrt, seed)
            gc = torch.autograd.grad(compiled, [xc, *wrt] if input_grad else wrt, seed)
            names = ["input"] if input_grad else []
            names += [n for n, p in params.items() if p.requires_grad]
            for name, a, b in zip(names, ge, gc, strict=True):
                if not torch.equal(a, b):
                    return False, f"gradient of {name}"
    return True, ""


def main() -> None:
    """Serve requests until stdin closes."""
    first = json.loads(sys.stdin.readline() or "{}")
    # A low CPU priority (inherited by the C++ compiler it runs): on a machine with few cores
    # a compile takes the time training leaves idle rather than slowing training's steps.
    if hasattr(os, "nice") and int(first.get("nice", 0)) > 0:
        os.nice(int(first["nice"]))
    _set_up(int(first.get("threads", 1)))
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            result = compile_variant(request)
        except Exception as exc:  # reported to the trainer, which keeps the eager kernel
            result = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        result["id"] = request["id"]
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
