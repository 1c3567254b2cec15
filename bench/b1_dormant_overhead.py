"""B1: a train step with seed layers, all dormant, divided by the same step on the plain host.

Both models start from the same weights and take the same batches; their steps are interleaved
(alternating which goes first) so that drift in the machine hits both alike, and the ratio is
the median over many repetitions. Target: <= 1.01 (SPEC §10).

    .venv/bin/python bench/b1_dormant_overhead.py [--reps 200] [--steps 5] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper_es.nn import (
    CharTransformer,
    DigitsCNN,
    SeedLayer,
    SeedLayerSpec,
    place_seed_layers,
)
from esper_es.nn.placement import attach_seed_layer

Step = Callable[[], None]


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> Step:
    """A closure doing forward, backward and an SGD step on a fixed batch."""

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(x)
        F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)).backward()
        opt.step()

    return step


def timed(step: Step, n: int) -> float:
    """Seconds for `n` steps."""
    start = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - start


def wrapper_overhead_us(layer: SeedLayer, x: Tensor) -> float:
    """Median extra microseconds a dormant seed point adds to one call of the module it wraps."""
    bare = nn.Identity()
    # What placement does to the module at a seed point: a layer like `layer`, attached.
    host = nn.Sequential(nn.Identity())
    twin = SeedLayer(layer.name, layer.shape_kind, layer.channels, layer.num_seeds)
    attach_seed_layer(host, "0", twin)
    wrapped = host[0]
    diffs = []
    with torch.no_grad():
        for _ in range(300):
            t0 = time.perf_counter()
            for _ in range(100):
                bare(x)
            t1 = time.perf_counter()
            for _ in range(100):
                wrapped(x)
            t2 = time.perf_counter()
            diffs.append(((t2 - t1) - (t1 - t0)) / 100)
    return statistics.median(diffs) * 1e6


def measure(
    name: str, plain: nn.Module, paths: dict[str, SeedLayerSpec], x: Tensor, y: Tensor, a: Any
) -> dict[str, object]:
    """Median per-step times and their ratio for one host."""
    seeded = copy.deepcopy(plain)
    layers = place_seed_layers(seeded, paths, x)
    assert not any(layer.active for layer in layers.values())
    steps = {
        "plain": train_step(plain, torch.optim.SGD(plain.parameters(), lr=0.01), x, y),
        "seeded": train_step(seeded, torch.optim.SGD(seeded.parameters(), lr=0.01), x, y),
    }
    for s in steps.values():
        timed(s, a.warmup)
    times: dict[str, list[float]] = {"plain": [], "seeded": []}
    ratios = []
    for rep in range(a.reps):
        order = ("plain", "seeded") if rep % 2 == 0 else ("seeded", "plain")
        t = {k: timed(steps[k], a.steps) / a.steps for k in order}
        for k, v in t.items():
            times[k].append(v)
        ratios.append(t["seeded"] / t["plain"])
    overhead_us = wrapper_overhead_us(next(iter(layers.values())), x)
    plain_ms = statistics.median(times["plain"]) * 1e3
    seeded_ms = statistics.median(times["seeded"]) * 1e3
    return {
        "host": name,
        "seed layers": ", ".join(f"{p} ({s.num_seeds})" for p, s in paths.items()),
        "plain ms": plain_ms,
        "seeded ms": seeded_ms,
        "ratio of medians": seeded_ms / plain_ms,
        "median paired ratio": statistics.median(ratios),
        "dormant point cost us": overhead_us,
        "estimated ratio": 1 + overhead_us * len(paths) / (plain_ms * 1e3),
    }


def main() -> None:
    """Run B1 on the example CNN and transformer and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    a = parser.parse_args()
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    rows = []
    cnn = DigitsCNN(seed=0)
    x = torch.randn(64, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    spec = SeedLayerSpec(num_seeds=2)
    rows.append(measure("DigitsCNN", cnn, {"layer1": spec, "layer2": spec}, x, y, a))
    lm = CharTransformer(vocab_size=64, d_model=32, n_heads=2, max_len=32, seed=0)
    idx = torch.randint(0, 64, (16, 32), generator=g)
    target = torch.randint(0, 64, (16, 32), generator=g)
    lm_paths = {"blocks.0": spec, "blocks.1": spec}
    rows.append(measure("CharTransformer", lm, lm_paths, idx, target, a))
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()]
        print("| " + " | ".join(cells) + " |")
    print()
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; Python {platform.python_version()}, torch {torch.__version__}, "
        f"intra-op threads {torch.get_num_threads()}, inter-op threads "
        f"{torch.get_num_interop_threads()}; {a.reps} interleaved reps x {a.steps} steps, "
        "median; target ratio <= 1.01. 'estimated ratio' = 1 + (cost of the dormant wrappers, "
        "timed alone) / (plain step time): the structural overhead without the run-to-run noise"
    )


if __name__ == "__main__":
    main()
