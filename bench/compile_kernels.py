"""Does `torch.compile` pay for seed kernels on this CPU? Compile time and steady-state speed-up.

For each blueprint on a typical activation (digits host: image 4 channels 8x8, batch 32; text
host: sequence 32 channels, 32 steps, batch 32) it times forward+backward of the eager kernel
and of `torch.compile(kernel.body)` (inductor), side by side, after warm-up, with 1 thread (the
trainer's default), and checks whether outputs and gradients are bit-identical.

With `--switchable` it asks the compile worker the trainer uses (esper_es.library.
compile_worker) instead, per blueprint, for a training call (forward + backward) and a
`no_grad` call of that shape: whether its compiled variant is bit-identical to eager on random
weights and inputs, i.e. whether a run would ever switch to it.

    .venv/bin/python bench/compile_kernels.py [--steps N] [--switchable] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import torch

from esper_es.nn.kernels import build_kernel

CASES = [
    ("conv3x3", "image", 4, (32, 4, 8, 8), {"expansion": 4.0}),
    ("depthwise", "image", 4, (32, 4, 8, 8), None),
    ("se_attention", "image", 4, (32, 4, 8, 8), None),
    ("mlp", "image", 4, (32, 4, 8, 8), {"expansion": 8.0}),
    ("lora", "image", 4, (32, 4, 8, 8), None),
    ("norm", "image", 4, (32, 4, 8, 8), None),
    ("attention", "sequence", 32, (32, 32, 32), None),
    ("mlp", "sequence", 32, (32, 32, 32), {"expansion": 2.0}),
]


def _step(fn: Any, params: list[torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, list[Any]]:
    for p in params:
        p.grad = None
    y = fn(x)
    y.square().mean().backward()
    return y.detach(), [None if p.grad is None else p.grad.clone() for p in params]


def _time(fn: Any, params: list[torch.Tensor], x: torch.Tensor, steps: int) -> float:
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(steps):
            _step(fn, params, x)
        samples.append((time.perf_counter() - t) / steps)
    return statistics.median(samples)


def measure(steps: int) -> list[dict[str, Any]]:
    """One row per case: compile seconds, eager and compiled step times, speed-up, identity."""
    torch.set_num_threads(1)
    rows = []
    for name, kind, channels, shape, cfg in CASES:
        kernel = build_kernel(name, kind, channels, 1234, cfg)
        params = list(kernel.parameters())
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        y_e, g_e = _step(kernel.body, params, x)
        t0 = time.perf_counter()
        compiled = torch.compile(kernel.body)
        y_c, g_c = _step(compiled, params, x)
        compile_s = time.perf_counter() - t0
        eager = _time(kernel.body, params, x, steps)
        comp = _time(compiled, params, x, steps)
        max_grad = max(
            (float((a - b).abs().max()) for a, b in zip(g_e, g_c, strict=True) if a is not None),
            default=0.0,
        )
        rows.append(
            {
                "blueprint": name,
                "shape": f"{kind}{list(shape)}",
                "compile_s": round(compile_s, 2),
                "eager_ms": round(eager * 1e3, 3),
                "compiled_ms": round(comp * 1e3, 3),
                "speedup": round(eager / comp, 2),
                "bit_identical_forward": bool(torch.equal(y_e, y_c)),
                "bit_identical_grads": all(
                    (a is None and b is None) or (a is not None and torch.equal(a, b))
                    for a, b in zip(g_e, g_c, strict=True)
                ),
                "max_forward_diff": float((y_e - y_c).abs().max()),
                "max_grad_diff": max_grad,
            }
        )
    return rows


def switchable() -> list[dict[str, Any]]:
    """One row per case: the worker's verdict for a training and a no_grad call."""
    from esper_es.library.compiler import BackgroundCompiler, attach

    BackgroundCompiler.nice = 0  # nothing trains here: no need to yield the cores
    compiler = BackgroundCompiler(threads=1)
    rows = []
    try:
        for name, kind, channels, shape, cfg in CASES:
            kernel = build_kernel(name, kind, channels, 1234, cfg)
            d = attach(kernel)
            x = torch.randn(*shape)
            row: dict[str, Any] = {"blueprint": name, "shape": f"{kind}{list(shape)}"}
            for label, grad in (("train", True), ("no_grad", False)):
                with torch.set_grad_enabled(grad):
                    variant = d.variant(x.clone().requires_grad_(grad))
                assert variant is not None
                done = compiler.compile_now(kernel, variant)
                row[f"{label}_identical"] = done.identical
                row[f"{label}_why"] = done.why
                row[f"{label}_compile_s"] = round(done.seconds, 2)
            rows.append(row)
    finally:
        compiler.close()
    return rows


def main() -> None:
    """Print the table (or JSON)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--switchable", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.switchable:
        found = switchable()
        if args.json:
            print(json.dumps({"rows": found}))
            return
        print(
            "| blueprint | shape | train: identical (compile s) | no_grad: identical (compile s) |"
        )
        print("|---|---|---|---|")
        for r in found:
            cells = [
                ("yes" if r[f"{k}_identical"] else "no: " + r[f"{k}_why"])
                + f" ({r[f'{k}_compile_s']})"
                for k in ("train", "no_grad")
            ]
            print(f"| {r['blueprint']} | {r['shape']} | {cells[0]} | {cells[1]} |")
        return
    rows = measure(args.steps)
    machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread"
    if args.json:
        print(json.dumps({"machine": machine, "rows": rows}))
        return
    print(f"# torch.compile on seed kernels ({machine})")
    print(
        "| blueprint | shape | compile s | eager ms | compiled ms | speed-up "
        "| fwd bit-id | grad bit-id |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['blueprint']} | {r['shape']} | {r['compile_s']} | {r['eager_ms']} | "
            f"{r['compiled_ms']} | {r['speedup']} | {r['bit_identical_forward']} | "
            f"{r['bit_identical_grads']} |"
        )


if __name__ == "__main__":
    main()
