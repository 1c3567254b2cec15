"""Background compilation of kernels (the seed documents' Tezzeret), off by default.

A kernel is compiled per *variant*: the exact call it serves (activation shape, dtype, grad
mode, whether the activation and the parameters need gradients, train/eval mode), as seen in
the live run, never a guess. Compiles run in a separate process (`compile_worker`; why not a
thread: see there), which checks each artifact against the eager body bit for bit on random
weights and inputs. Only a bit-identical variant is ever switched to, so a kernel's numbers are
the same compiled or not, and a run replays bit for bit with compilation on or off.

In the training process: `attach` gives a kernel a `Dispatch` forward that runs the compiled
artifact of a call's variant when one is installed and the eager body otherwise (and notes
the variant); nothing there ever traces or compiles, so no step waits for a compile or
recompiles on the training thread. `BackgroundCompiler` feeds the worker from a thread that
only waits on the pipe and loads finished artifacts (~10 ms, no tracing).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch import Tensor

from esper_es.nn.kernels import Kernel

BACKEND = "inductor"


@attrs.frozen(order=True)
class Variant:
    """One kind of call of a kernel: what a compiled artifact is specialised for."""

    shape: tuple[int, ...]
    dtype: str
    grad: bool
    """Grad mode enabled (training) or not (`no_grad` evaluation)."""
    input_grad: bool
    params_grad: bool
    training: bool
    """The kernel's train/eval flag."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form recorded in `KernelCompiled.variant`."""
        d = attrs.asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Variant:
        """Inverse of `to_dict`."""
        return cls(
            tuple(int(s) for s in d["shape"]),
            str(d["dtype"]),
            bool(d["grad"]),
            bool(d["input_grad"]),
            bool(d["params_grad"]),
            bool(d["training"]),
        )


class Dispatch:
    """A kernel's forward while compilation is on: compiled per installed variant, else eager."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.compiled: dict[Variant, Callable[[Tensor], Tensor]] = {}
        #: Variants called since the trainer last collected them (`take_seen`).
        self.seen: set[Variant] = set()
        self.calls = {"compiled": 0, "eager": 0}

    def variant(self, x: Tensor) -> Variant | None:
        """The variant of a call with `x`, or None for calls never compiled (non-contiguous)."""
        if not x.is_contiguous():
            return None
        grad = torch.is_grad_enabled()
        # Without grad mode, whether tensors require grad changes nothing a compile sees.
        params_grad = grad and all(p.requires_grad for p in self.kernel.parameters())
        return Variant(
            tuple(x.shape),
            str(x.dtype).removeprefix("torch."),
            grad,
            grad and x.requires_grad,
            params_grad,
            self.kernel.training,
        )

    def __call__(self, x: Tensor) -> Tensor:
        """Run the call's compiled variant if installed, the eager body otherwise."""
        v = self.variant(x)
        fn = self.compiled.get(v) if v is not None else None
        if fn is not None:
            self.calls["compiled"] += 1
            return fn(x)
        if v is not None:
            self.seen.add(v)
        self.calls["eager"] += 1
        out: Tensor = self.kernel.body(x)
        return out

    def __deepcopy__(self, memo: dict[int, Any]) -> Dispatch:
        """A copied kernel's own dispatch, nothing installed (artifacts bind the original's)."""
        # Eager computes the same numbers, and the copy compiles its variants anew if wanted.
        kernel = memo.get(id(self.kernel), self.kernel)
        return Dispatch(kernel)

    def take_seen(self) -> set[Variant]:
        """The variants called eagerly since the last call."""
        seen, self.seen = self.seen, set()
        return seen


def attach(kernel: Kernel) -> Dispatch:
    """Give `kernel` its dispatching forward (once); its parameters and state_dict are unchanged."""
    d = getattr(kernel, "dispatch", None)
    if isinstance(d, Dispatch):
        return d
    d = Dispatch(kernel)
    # An attribute set with object.__setattr__ so nn.Module does not register anything: the
    # state_dict (and so the fingerprint) must not change.
    object.__setattr__(kernel, "dispatch", d)
    kernel.forward = d  # type: ignore[method-assign]
    return d


def dispatch_of(kernel: Kernel) -> Dispatch | None:
    """The kernel's `Dispatch`, if `attach` gave it one."""
    d = getattr(kernel, "dispatch", None)
    return d if isinstance(d, Dispatch) else None


def is_compiled(kernel: Kernel, variant: Variant | None = None) -> bool:
    """Whether a compiled variant (that one, or any) is installed."""
    d = dispatch_of(kernel)
    if d is None:
        return False
    return bool(d.compiled) if variant is None else variant in d.compiled


def recipe(kernel: Kernel) -> dict[str, Any]:
    """What the worker rebuilds the kernel from (its weights do not matter to a compile)."""
    spec = kernel.spec
    return {
        "blueprint": spec.blueprint,
        "config": dict(spec.config),
        "shape_kind": spec.shape_kind,
        "channels": spec.channels,
        "init_seed": spec.init_seed,
    }


def bind(kernel: Kernel, artifact: Any, order: list[str]) -> Callable[[Tensor], Tensor]:
    """A forward for `kernel` calling `artifact` with its live parameters in graph order."""
    params = dict(kernel.body.named_parameters())
    missing = [n for n in order if n and n not in params]
    if missing:
        raise ValueError(f"kernel {kernel.kernel_id} has no parameters {missing}")
    slots = [params[n] if n else None for n in order]

    def forward(x: Tensor) -> Tensor:
        out = artifact(*[x if p is None else p for p in slots])
        y: Tensor = out[0] if isinstance(out, tuple | list) else out
        return y

    return forward


@attrs.frozen
class Compiled:
    """A finished compile of one variant: identical to eager or not, and the loaded artifact."""

    seed: str
    kernel_id: str
    variant: Variant
    seconds: float
    identical: bool
    why: str
    artifact: Any = attrs.field(eq=False, repr=False)
    order: tuple[str, ...] = ()


@attrs.frozen
class _Request:
    id: int
    seed: str
    kernel_id: str
    variant: Variant
    recipe: dict[str, Any]


class BackgroundCompiler:
    """Compiles kernel variants in a worker process; training never waits for it."""

    #: The worker's niceness. 19 (the lowest priority) yields every core training wants; on a
    #: machine saturated by other work, compiles then wait for idle time.
    nice = 19

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self._dir = tempfile.mkdtemp(prefix="esper-es-compile-")
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: list[_Request] = []
        self._done: list[Compiled] = []
        self._failed: list[tuple[_Request, str]] = []
        self._count = 0
        self._closed = False
        self._proc: subprocess.Popen[str] | None = None
        self._busy = False
        self._io = threading.Lock()
        #: The worker process's pid once it answered (it is never this process).
        self.worker_pid: int | None = None
        self._thread = threading.Thread(target=self._serve, name="tezzeret", daemon=True)
        self._thread.start()

    # --- the training thread's side -------------------------------------------------------

    def request(self, seed: str, kernel: Kernel, variant: Variant) -> None:
        """Queue a compile of `kernel` for `variant`."""
        with self._wake:
            self._count += 1
            req = _Request(self._count, seed, kernel.kernel_id, variant, recipe(kernel))
            self._queue.append(req)
            self._wake.notify()

    def forget(self, seed: str, kernel_id: str) -> None:
        """Drop the queued requests and finished results of a kernel the seed no longer holds."""
        with self._lock:
            self._queue = [r for r in self._queue if (r.seed, r.kernel_id) != (seed, kernel_id)]
            self._done = [c for c in self._done if (c.seed, c.kernel_id) != (seed, kernel_id)]

    def ready(self) -> list[Compiled]:
        """The finished compiles (identical or not), removed from the finished set."""
        with self._lock:
            done, self._done = self._done, []
        return sorted(done, key=lambda c: (c.seed, c.variant))

    def failures(self) -> list[tuple[str, str]]:
        """(seed, error) of compiles that failed, removed from the failed set."""
        with self._lock:
            failed, self._failed = self._failed, []
        return [(r.seed, why) for r, why in failed]

    def pending(self) -> int:
        """Requests queued or in progress."""
        with self._lock:
            return len(self._queue) + (1 if self._busy else 0)

    def compile_now(self, kernel: Kernel, variant: Variant) -> Compiled:
        """Compile on the calling thread's behalf and wait (replay only, never live training)."""
        c = _Request(0, "", kernel.kernel_id, variant, recipe(kernel))
        return self._compile(c)

    def close(self) -> None:
        """Stop the worker process and remove the artifacts."""
        with self._wake:
            self._closed = True
            self._queue.clear()
            self._wake.notify()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    # --- the compile thread ---------------------------------------------------------------

    def _serve(self) -> None:
        # Start the worker and import the loader now, while no compile is waiting for them.
        try:
            from torch._inductor.standalone_compile import CompiledArtifact  # noqa: F401

            with self._io:
                self._worker()
        except Exception:  # retried, and reported, by the first request
            pass
        while True:
            with self._wake:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                req = self._queue.pop(0)
                self._busy = True
            try:
                done = self._compile(req)
            except Exception as exc:
                with self._lock:
                    self._busy = False
                    if not self._closed:
                        self._failed.append((req, f"{type(exc).__name__}: {exc}"))
                continue
            with self._lock:
                self._busy = False
                if not self._closed:
                    self._done.append(done)

    def _compile(self, req: _Request) -> Compiled:
        from torch._inductor.standalone_compile import CompiledArtifact

        with self._io:
            path = os.path.join(self._dir, f"{req.kernel_id}-{req.id}-{time.monotonic_ns()}.bin")
            line = {"id": req.id, "path": path, **req.recipe, **req.variant.to_dict()}
            result = self._ask(line)
        if "error" in result:
            raise RuntimeError(result["error"])
        artifact = None
        if result["identical"]:
            artifact = CompiledArtifact.load(path=path, format="binary")
        return Compiled(
            req.seed,
            req.kernel_id,
            req.variant,
            float(result["seconds"]),
            bool(result["identical"]),
            str(result["why"]),
            artifact,
            tuple(result["order"]),
        )

    def _ask(self, line: dict[str, Any]) -> dict[str, Any]:
        proc = self._worker()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(line) + "\n")
        proc.stdin.flush()
        answer = proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the compile worker exited (code {proc.poll()})")
        result: dict[str, Any] = json.loads(answer)
        return result

    def _worker(self) -> subprocess.Popen[str]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        env = dict(os.environ)
        # One compile at a time, in this process: inductor's own pool of compile processes
        # would take the cores training runs on.
        env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
        proc = subprocess.Popen(
            [sys.executable, "-m", "esper_es.library.compile_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({"threads": self.threads, "nice": self.nice}) + "\n")
        proc.stdin.flush()
        hello = proc.stdout.readline()
        if not hello:
            raise RuntimeError(f"the compile worker did not start (code {proc.poll()})")
        self.worker_pid = int(json.loads(hello)["pid"])
        self._proc = proc
        return proc


def prepare_loading() -> None:
    """Import what loading an artifact needs (~0.8 s), on the calling thread.

    Done before a run's first step: imported on the compile thread during the run instead, these
    ~700 modules hold the GIL in stretches for ~1.5 s, and the slowest step of a measured run
    (246 ms) fell in that window. What remains of a first load afterwards mostly waits on files
    and subprocesses, with the GIL released.
    """
    import torch._functorch._aot_autograd.autograd_cache
    import torch._inductor.codecache
    import torch._inductor.compile_fx
    import torch._inductor.cpp_builder
    import torch._inductor.cpu_vec_isa
    import torch._inductor.output_code
    import torch._inductor.standalone_compile
    import torch.utils.cpp_extension  # noqa: F401

    from esper_es.runtime.environment import sync_compiler_determinism

    sync_compiler_determinism()


def install(kernel: Kernel, done: Compiled) -> None:
    """Switch `kernel`'s calls of `done.variant` to the compiled artifact."""
    if not done.identical or done.artifact is None:
        raise ValueError(f"variant {done.variant} of {kernel.kernel_id} is not bit-identical")
    attach(kernel).compiled[done.variant] = bind(kernel, done.artifact, list(done.order))


def describe(c: Compiled) -> dict[str, Any]:
    """The `KernelCompiled` fields of a finished compile (step added by the trainer)."""
    return {
        "seed": c.seed,
        "kernel_id": c.kernel_id,
        "backend": BACKEND,
        "compile_seconds": round(c.seconds, 6),
        "variant": c.variant.to_dict(),
    }
