"""Numerics modes (SPEC §5): which CPU code paths a run's arithmetic may depend on.

- `native` (default): torch picks the fastest kernels of this CPU. The same software on another
  CPU model can produce other bits, so a native run replays only on a CPU whose identity
  (vendor, family/model, kernel-selecting ISA features) matches; elsewhere replay is refused
  with exit 4 before the first step.
- `portable`: every processor-dependent path is pinned to one that any x86-64 CPU with AVX2
  and FMA runs identically, so a run replays bit for bit on any such machine.

What portable pins, and why each (measured on torch 2.13.0+cpu, MKL 2024.2, oneDNN 3.12; the
default digits run's final fingerprint changes with each knob on one machine, so each selects
different arithmetic):

- `ATEN_CPU_CAPABILITY=avx2`: ATen's vectorised kernels (reductions, elementwise ops, Sleef
  transcendentals) exist per ISA, and AVX-512 builds sum in other lane orders.
- `MKL_CBWR=AVX2,STRICT` (+ `MKL_ENABLE_INSTRUCTIONS=AVX2`): MKL's GEMM dispatches by vendor
  and ISA (its AVX-512 branch runs on Intel, its AVX2 branch on AMD: the cause of the
  AMD-recorded corpus diverging on Intel). Conditional Numerical Reproducibility pins the
  branch, fixes cache-size blocking and static scheduling; STRICT removes the dependence on
  data alignment.
- oneDNN and NNPACK switched off (`torch.backends.mkldnn.enabled = False`, NNPACK flags off):
  both JIT or block their kernels from the CPU's ISA *and cache sizes*, which differ between
  vendors even at one ISA; with both off, convolutions run ATen's im2col + MKL GEMM, which
  the pins above cover. `ONEDNN_MAX_CPU_ISA=AVX2` is set too, for anything that still
  reaches oneDNN.

The environment variables are read when torch (ATen's dispatcher) and MKL initialise, so they
must be in `os.environ` before `import torch`: the CLI sets them before it imports torch; the
Python API refuses a portable run when torch came first without them (`PortableNotPinned`,
which says what to do). This module must therefore never import torch at module level.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

from esper_es.errors import EnvironmentMismatch

NATIVE = "native"
PORTABLE = "portable"
MODES: tuple[str, ...] = (NATIVE, PORTABLE)

#: The environment a portable run needs before torch is imported.
PORTABLE_ENV: Mapping[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2,STRICT",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
}

#: The CPU features portable mode needs (the pinned kernels use them).
PORTABLE_REQUIRES: tuple[str, ...] = ("avx2", "fma")

#: CPU flags that select a kernel somewhere in torch, MKL or oneDNN (recorded in the CPU
#: identity; other flags do not change which code runs).
KERNEL_FLAGS: tuple[str, ...] = (
    "sse4_2",
    "avx",
    "f16c",
    "fma",
    "avx2",
    "avx512f",
    "avx512dq",
    "avx512cd",
    "avx512bw",
    "avx512vl",
    "avx512ifma",
    "avx512vbmi",
    "avx512_vbmi2",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


class PortableNotPinned(EnvironmentMismatch):
    """A portable run was asked for in a process whose torch was not started with the pins."""

    def __init__(self, differences: list[tuple[str, object, object]]) -> None:
        super().__init__(differences)
        exports = " ".join(f"{k}={v}" for k, v in PORTABLE_ENV.items())
        fields = ", ".join(name for name, _, _ in differences)
        self.args = (
            f"numerics = 'portable' needs CPU code paths pinned before torch is imported, and "
            f"this process differs ({fields}). Use the esper-es command line (it pins them), or "
            f"call esper_es.numerics.pin_portable() before the first `import torch`, or start "
            f"Python with: {exports}",
        )


def check_mode(mode: str) -> str:
    """`mode` if it is a numerics mode, else ValueError naming the known ones."""
    if mode not in MODES:
        raise ValueError(f"numerics must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def pin_portable(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Put the portable pins into `environ` (default `os.environ`); the names it changed.

    Effective only before torch is imported in this process (or for child processes).
    """
    env = os.environ if environ is None else environ
    changed = [k for k, v in PORTABLE_ENV.items() if env.get(k) != v]
    for k in changed:
        env[k] = PORTABLE_ENV[k]
    return changed


def unpinned(environ: Mapping[str, str] | None = None) -> list[tuple[str, object, object]]:
    """Each portable variable `environ` lacks, as `(name, wanted, present)`."""
    env = os.environ if environ is None else environ
    return [(k, v, env.get(k)) for k, v in PORTABLE_ENV.items() if env.get(k) != v]


def activate(mode: str) -> None:
    """Put torch's switchable back ends in `mode`'s state; refuse a portable run pinned too late.

    For `portable` the pins must already be in force: if torch is not imported yet they are
    set here; otherwise the environment and ATen's dispatch level are checked and a mismatch
    raises `PortableNotPinned` (exit 4). `native` restores torch's defaults (oneDNN and NNPACK
    on), so one process can run both modes one after the other.
    """
    check_mode(mode)
    if mode == PORTABLE and "torch" not in sys.modules:
        pin_portable()
    import torch

    if mode == PORTABLE:
        wrong = unpinned()
        capability = str(torch.backends.cpu.get_cpu_capability())
        if capability != "AVX2":
            wrong.append(("cpu_capability", "AVX2", capability))
        if wrong:
            missing = [f for f in PORTABLE_REQUIRES if f not in cpu_identity()["flags"]]
            if missing:
                wrong.append(("cpu flags", list(PORTABLE_REQUIRES), f"missing {missing}"))
            raise PortableNotPinned(wrong)
    on = mode == NATIVE
    torch.backends.mkldnn.enabled = on  # type: ignore[assignment]
    torch._C._set_nnpack_enabled(on)


@functools.cache  # read once a process: a run's start read it twice (B2)
def _cpuinfo() -> Mapping[str, str]:
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor describes them all
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_identity() -> dict[str, Any]:
    """What selects CPU kernels here: vendor, family/model/stepping, model name, ISA flags."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    return {
        "vendor": info.get("vendor_id") or platform.processor() or None,
        "family": info.get("cpu family"),
        "model": info.get("model"),
        "stepping": info.get("stepping"),
        "model_name": info.get("model name") or platform.processor() or None,
        "flags": [f for f in KERNEL_FLAGS if f in flags],
    }
