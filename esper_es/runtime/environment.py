"""The numeric environment of a run (SPEC §5): capture it, pin it, compare it before replay.

`capture_environment()` returns a flat JSON object (one nested object, `numerics_env`) that
`RunStarted.environment` records. Fields fall in two deliberate groups:

* **compared** (every field not in `RECORDED_ONLY`): anything that can change the bits a run
  produces on this machine — interpreter, library and esper-es versions (their code paths and
  defaults change numerics and RNG streams), thread counts (a CPU reduction split over 2 threads
  sums in another order than over 1), deterministic-algorithm and precision flags, the default
  dtype, platform system / machine / libc (libm's transcendental functions differ between glibc
  releases, and Python-side schedules use them), the CPU kernel capability torch dispatches to,
  MKL / oneDNN / OpenMP availability, a digest of torch's build configuration, the environment
  variables MKL and oneDNN read to pick code paths, and, on CUDA, the GPU and cuDNN settings.
  Unknown fields (from a newer esper-es) are compared too: strict by default, since the
  esper-es version differs then anyway.
* **recorded only** (`RECORDED_ONLY`): facts that help a person diagnose a divergence but that
  do not change numerics once the compared fields agree, and that would refuse replays between
  otherwise identical machines — the full `sys.version` build string, kernel release, CPU model
  name, logical CPU count, whether CUDA exists at all, `PYTHONHASHSEED`.

Deliberately **not recorded**: hostname, user, paths, time, and every other environment
variable — they identify people and machines and never change the result.

A field that does not apply (cuDNN flags on a CPU run) is `None`, so the key set is stable.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import platform
import sys
import warnings
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import torch

import esper_es
from esper_es import numerics
from esper_es.errors import EnvironmentMismatch

ENVIRONMENT_SCHEMA = 1

# Shown for a field one side lacks; a string so that differences stay JSON-serialisable.
ABSENT = "<absent>"

RECORDED_ONLY: frozenset[str] = frozenset(
    {
        "python_build",
        "platform_release",
        "cpu_model",
        "cpu_count",
        "cuda_available",
        "python_hash_seed",
    }
)

# Environment variables that select MKL / oneDNN / ATen code paths or floating-point modes.
# Thread-count variables are left out: their effect is recorded as the thread counts.
NUMERICS_ENV_VARS: tuple[str, ...] = (
    "ATEN_CPU_CAPABILITY",
    "CUBLAS_WORKSPACE_CONFIG",
    "DNNL_DEFAULT_FPMATH_MODE",
    "DNNL_MAX_CPU_ISA",
    "MKL_CBWR",
    "MKL_DEBUG_CPU_TYPE",
    "MKL_ENABLE_INSTRUCTIONS",
    "ONEDNN_DEFAULT_FPMATH_MODE",
    "ONEDNN_MAX_CPU_ISA",
    "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
)

_MKLDNN_BACKENDS = ("matmul", "conv", "rnn")

# Fields added with numerics modes: a log from before them lacks them, which is no difference.
_ADDED_WITH_NUMERICS = frozenset(
    {"numerics", "cpu", "nnpack_enabled", "blas_build", "onednn_build"}
)


class InteropThreadsLocked(EnvironmentMismatch):
    """torch's inter-op thread count is fixed for this process and differs from the one asked."""

    def __init__(self, wanted: int, current: int) -> None:
        super().__init__([("torch_num_interop_threads", wanted, current)])
        self.wanted = wanted
        self.current = current
        self.args = (
            f"cannot set torch inter-op threads to {wanted}: this process already uses "
            f"{current}, and torch fixes the count once it is set or parallel work has "
            "started; call pin_threads() first thing in a fresh process",
        )


def _matmul_precision() -> str:
    # Mixing the legacy and per-backend precision APIs makes the legacy getter warn; the
    # per-backend values are recorded separately, so the warning adds nothing here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(torch.get_float32_matmul_precision())


def _mkldnn_precision(backend: str) -> str | None:
    sub = getattr(torch.backends.mkldnn, backend, None)
    value = getattr(sub, "fp32_precision", None)
    return None if value is None else str(value)


def _libc() -> str:
    name, version = platform.libc_ver()
    return f"{name} {version}".strip()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _build_line(prefix: str) -> str | None:
    for line in torch.__config__.show().splitlines():
        if line.strip().lstrip("- ").startswith(prefix):
            return line.strip().lstrip("- ")
    return None


def current_numerics() -> str:
    """The numerics mode this process is in (`portable` only with every pin in force)."""
    pinned = (
        not numerics.unpinned()
        and str(torch.backends.cpu.get_cpu_capability()) == "AVX2"
        and not torch.backends.mkldnn.enabled
        and not torch._C._get_nnpack_enabled()
    )
    return numerics.PORTABLE if pinned else numerics.NATIVE


def _torch_build_digest() -> str:
    # The CPU capability line reflects ATEN_CPU_CAPABILITY at run time and is its own field;
    # dropping it keeps this digest about the build alone.
    text = "\n".join(
        line for line in torch.__config__.show().splitlines() if "CPU capability" not in line
    )
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _parallel_backend() -> str | None:
    for line in torch.__config__.parallel_info().splitlines():
        if line.startswith("ATen parallel backend:"):
            return line.split(":", 1)[1].strip()
    return None


def _cuda_fields(device: torch.device) -> dict[str, Any]:
    fields: dict[str, Any] = dict.fromkeys(
        (
            "cuda_device_name",
            "cuda_capability",
            "cudnn_version",
            "cudnn_deterministic",
            "cudnn_benchmark",
            "cudnn_allow_tf32",
            "cuda_matmul_allow_tf32",
        )
    )
    if device.type != "cuda":
        return fields
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    fields.update(
        cuda_device_name=torch.cuda.get_device_name(index),
        cuda_capability=f"{major}.{minor}",
        cudnn_version=torch.backends.cudnn.version(),  # type: ignore[no-untyped-call]
        cudnn_deterministic=bool(torch.backends.cudnn.deterministic),
        cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
        cudnn_allow_tf32=bool(torch.backends.cudnn.allow_tf32),
        cuda_matmul_allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32),
    )
    return fields


@functools.cache
def _process_fields() -> dict[str, Any]:
    """The fields no setting in this process can change: read once, not at every run's start.

    Reading them (`/proc/cpuinfo` twice, torch's build configuration twice, libc's version
    from the interpreter binary) was ~0.5 ms of every run's boundary 0 (B2).
    """
    return {
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_build": sys.version,
        "torch_version": str(torch.__version__),
        "numpy_version": str(np.__version__),
        "esper_es_version": esper_es.__version__,
        "platform_system": platform.system(),
        "platform_machine": platform.machine(),
        "platform_release": platform.release(),
        "libc": _libc(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "mkl_available": torch.backends.mkl.is_available(),  # type: ignore[no-untyped-call]
        "mkldnn_available": torch.backends.mkldnn.is_available(),  # type: ignore[no-untyped-call]
        "blas_build": _build_line("Intel(R) oneAPI Math Kernel Library") or _build_line("BLAS"),
        "onednn_build": _build_line("Intel(R) MKL-DNN") or _build_line("oneDNN"),
        "cpu": numerics.cpu_identity(),
        "openmp_available": torch.backends.openmp.is_available(),  # type: ignore[no-untyped-call]
        "aten_parallel_backend": _parallel_backend(),
        "torch_build_digest": _torch_build_digest(),
    }


def capture_environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """The environment for `RunStarted` (SPEC §5); JSON-serialisable, fields in the module doc."""
    dev = torch.device(device)
    env: dict[str, Any] = {
        "environment_schema": ENVIRONMENT_SCHEMA,
        **_process_fields(),
        "cpu": copy.deepcopy(_process_fields()["cpu"]),  # the caller's own: it may change it
        # What a run's settings can change, read at every call.
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "deterministic_fill_uninitialized_memory": bool(
            torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
        ),
        "float32_matmul_precision": _matmul_precision(),
        **{f"mkldnn_fp32_precision_{b}": _mkldnn_precision(b) for b in _MKLDNN_BACKENDS},
        "default_dtype": str(torch.get_default_dtype()).removeprefix("torch."),
        "device": dev.type,
        **_cuda_fields(dev),
        "cuda_available": torch.cuda.is_available(),
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "mkldnn_enabled": bool(torch.backends.mkldnn.enabled),
        "nnpack_enabled": bool(torch._C._get_nnpack_enabled()),
        "numerics": current_numerics(),
        "numerics_env": {name: os.environ.get(name) for name in NUMERICS_ENV_VARS},
        "python_hash_seed": os.environ.get("PYTHONHASHSEED"),
    }
    return env


def pin_threads(intra: int, inter: int | None = None) -> dict[str, int]:
    """Set torch's intra-op (and optionally inter-op) thread counts; returns the counts in force.

    The intra-op count can change at any time. The inter-op count can be set only once per
    process and only before any inter-op parallel work; if it is already what is asked, nothing
    is done, otherwise a refused change raises `InteropThreadsLocked` (an `EnvironmentMismatch`,
    exit code 4) naming both counts. Call this first thing in a process that trains or replays.
    """
    if intra < 1 or (inter is not None and inter < 1):
        raise ValueError(f"thread counts must be >= 1, got intra={intra}, inter={inter}")
    if inter is not None and torch.get_num_interop_threads() != inter:
        try:
            torch.set_num_interop_threads(inter)
        except RuntimeError as exc:
            raise InteropThreadsLocked(inter, torch.get_num_interop_threads()) from exc
    torch.set_num_threads(intra)
    return {
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
    }


def set_deterministic_algorithms(mode: bool, *, warn_only: bool = False) -> None:
    """`torch.use_deterministic_algorithms`, without importing the compiler stack.

    torch's function also sets `torch._inductor.config.deterministic`, and importing that
    module imports `torch._inductor` and `torch._dynamo` (about as long as `import torch`)
    for a flag only compiled code reads. The flag is set here when the compiler is already
    imported, and by `sync_compiler_determinism` by code that imports it.
    """
    torch._C._set_deterministic_algorithms(mode, warn_only=warn_only)
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        setattr(inductor, "deterministic", mode)  # noqa: B010 (a module read off sys.modules)


def sync_compiler_determinism() -> None:
    """Give the inductor compiler this process's deterministic-algorithms setting."""
    import torch._inductor.config as inductor

    inductor.deterministic = torch.are_deterministic_algorithms_enabled()


def configure_determinism(*, warn_only: bool = False, matmul_precision: str = "highest") -> None:
    """Turn on deterministic algorithms, full-precision float32 matmuls and deterministic cuDNN."""
    set_deterministic_algorithms(True, warn_only=warn_only)
    torch.set_float32_matmul_precision(matmul_precision)
    # Harmless on CPU builds; makes a CUDA run's convolutions reproducible.
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def apply_settings(recorded: Mapping[str, Any]) -> None:
    """Put this process's settable fields (threads, determinism, precision) to `recorded`'s.

    What cannot be set here (versions, platform, CPU) is left for `check_environment` to report.
    The numerics mode comes first: a portable run needs its pins in force
    (`numerics.PortableNotPinned`, exit 4, says how when they are not).
    """
    numerics.activate(str(recorded.get("numerics", numerics.NATIVE)))
    if "torch_num_threads" in recorded:
        pin_threads(int(recorded["torch_num_threads"]), recorded.get("torch_num_interop_threads"))
    if "deterministic_algorithms" in recorded:
        set_deterministic_algorithms(
            bool(recorded["deterministic_algorithms"]),
            warn_only=bool(recorded.get("deterministic_warn_only", False)),
        )
    fill = recorded.get("deterministic_fill_uninitialized_memory")
    if fill is not None:
        torch.utils.deterministic.fill_uninitialized_memory = bool(fill)  # type: ignore[attr-defined]
    precision = recorded.get("float32_matmul_precision")
    if precision is not None and precision != _matmul_precision():
        torch.set_float32_matmul_precision(precision)
    # The per-backend values go after the legacy call, which overwrites them.
    for backend in _MKLDNN_BACKENDS:
        value = recorded.get(f"mkldnn_fp32_precision_{backend}")
        if value is not None and value != _mkldnn_precision(backend):
            sub = getattr(torch.backends.mkldnn, backend)
            sub.fp32_precision = value
    for name in ("cudnn_deterministic", "cudnn_benchmark", "cudnn_allow_tf32"):
        if recorded.get(name) is not None:
            setattr(torch.backends.cudnn, name.removeprefix("cudnn_"), bool(recorded[name]))
    if recorded.get("cuda_matmul_allow_tf32") is not None:
        torch.backends.cuda.matmul.allow_tf32 = bool(recorded["cuda_matmul_allow_tf32"])


def _ignored(field: str, ignore: Collection[str]) -> bool:
    # Ignoring `numerics_env` ignores every `numerics_env.X` below it.
    parts = field.split(".")
    return any(".".join(parts[: i + 1]) in ignore for i in range(len(parts)))


def _diff(
    prefix: str,
    recorded: Mapping[str, Any],
    current: Mapping[str, Any],
    ignore: Collection[str],
    out: list[tuple[str, Any, Any]],
) -> None:
    for key in sorted(set(recorded) | set(current)):
        field = f"{prefix}{key}"
        if (not prefix and key in RECORDED_ONLY) or _ignored(field, ignore):
            continue
        a = recorded.get(key, ABSENT)
        b = current.get(key, ABSENT)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            _diff(f"{field}.", a, b, ignore, out)
        elif a != b or type(a) is not type(b):
            out.append((field, a, b))


def compare_environments(
    recorded: Mapping[str, Any], current: Mapping[str, Any], ignore: Collection[str] = ()
) -> list[tuple[str, Any, Any]]:
    """Every compared field that differs, as `(field, recorded, current)` sorted by field.

    Nested objects are compared per key and named with a dot (`numerics_env.MKL_CBWR`); a
    field one side lacks shows as `ABSENT`; `RECORDED_ONLY` fields and the names in `ignore`
    (a name also ignores everything below it) are skipped.
    """
    ignored = set(ignore)
    mode = recorded.get("numerics")
    if mode == numerics.PORTABLE:
        ignored.add("cpu")
    elif mode is None:
        ignored.update(_ADDED_WITH_NUMERICS)
    else:
        ignored.update({"cpu.stepping", "cpu.model_name"})
    out: list[tuple[str, Any, Any]] = []
    _diff("", recorded, current, frozenset(ignored), out)
    if mode is None and "cpu_model" not in ignored:
        # A log from before numerics modes: native, identified by its CPU model alone.
        a, b = recorded.get("cpu_model", ABSENT), current.get("cpu_model", ABSENT)
        if a != b:
            out.append(("cpu_model", a, b))
            out.sort(key=lambda d: d[0])
    return out


def check_environment(
    recorded: Mapping[str, Any],
    current: Mapping[str, Any] | None = None,
    override: bool = False,
    ignore: Collection[str] = (),
) -> list[tuple[str, Any, Any]]:
    """Refuse with `EnvironmentMismatch` naming every differing field, unless `override`.

    With `override` the differences are returned so the caller can record them; with none,
    the result is empty. `current` defaults to this process, captured for the recorded device.
    """
    if current is None:
        device = str(recorded.get("device", "cpu"))
        # A CUDA run where CUDA is absent: this process's CPU environment, whose `device`
        # (and CUDA fields) differ, so the refusal names them.
        if device.startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"
        current = capture_environment(device)
    differences = compare_environments(recorded, current, ignore)
    if differences and not override:
        raise EnvironmentMismatch(differences)
    return differences
