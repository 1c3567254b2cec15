"""The trainer's side of background compilation (`[library] compile = true`).

At each live boundary: every live kernel gets a dispatching forward (`compiler.attach`), the
call variants it ran eagerly since the last boundary are handed to the background compiler,
and each finished compile that the worker found bit-identical to eager becomes a
`KernelCompiled` fact in this boundary's transaction; its artifact is installed when the
projector applies the event (`switch`). A variant whose compiled numbers differ is never
switched to (counted in `rejected`). Nothing on the training thread traces or compiles.

Re-executing a log (replay, the recomputed part of resume and rollback) nothing is requested;
a recorded `KernelCompiled` is switched at its seq by compiling that variant synchronously when
compilation is on for the re-executing trainer, and ignored when it is off: the switch is
bit-identical to eager, so both reproduce the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from esper_es.core import commands as c
from esper_es.core import events as ev
from esper_es.library.compiler import (
    BackgroundCompiler,
    Compiled,
    Variant,
    attach,
    describe,
    dispatch_of,
    install,
    prepare_loading,
)
from esper_es.nn.kernels import Kernel

if TYPE_CHECKING:
    from esper_es.trainer.loop import Trainer


class KernelCompilation:
    """Requests, records and installs background compiles for one trainer."""

    def __init__(self, trainer: Trainer) -> None:
        self.t = trainer
        self.compiler: BackgroundCompiler | None = None
        #: (seed, kernel id, variant) requested or installed: never requested twice.
        self._requested: set[tuple[str, str, Variant]] = set()
        #: Finished identical compiles waiting for their `KernelCompiled` to be projected.
        self._finished: dict[tuple[str, str, Variant], Compiled] = {}
        self.rejected: list[Compiled] = []
        self._prepared = False
        self.failed: list[tuple[str, str]] = []

    @property
    def enabled(self) -> bool:
        """Whether this trainer compiles (its config's `[library] compile`)."""
        return bool(self.t.config.library.compile)

    @property
    def idle(self) -> bool:
        """Whether `facts` and `request` have nothing to do (compilation off, none started)."""
        return self.compiler is None and not self.enabled

    def prepare(self) -> None:
        """Before the first step, with compilation on: import what loading artifacts needs."""
        if self.enabled and not self._prepared:
            prepare_loading()
            self._prepared = True

    def _kernels(self) -> dict[str, Kernel]:
        out = {}
        for layer in self.t.layers.values():
            for i, seed in enumerate(layer.seed_ids()):
                kernel = layer.kernel(i)
                if isinstance(kernel, Kernel):
                    out[seed] = kernel
        return out

    def _start(self) -> BackgroundCompiler:
        if self.compiler is None:
            self.compiler = BackgroundCompiler(threads=self.t.config.runtime.threads)
        return self.compiler

    def request(self) -> None:
        """After a live boundary: compile the variants kernels ran eagerly; forget freed ones."""
        if not self.enabled:
            return
        kernels = self._kernels()
        if kernels:
            self._start()
        held = {(s, k.kernel_id) for s, k in kernels.items()}
        for key in [k for k in self._requested if (k[0], k[1]) not in held]:
            self._requested.discard(key)
            self._finished.pop(key, None)
            if self.compiler is not None:
                self.compiler.forget(key[0], key[1])
        for seed, kernel in kernels.items():
            dispatch = attach(kernel)
            for variant in sorted(dispatch.take_seen()):
                key = (seed, kernel.kernel_id, variant)
                if key not in self._requested:
                    self._requested.add(key)
                    self._start().request(seed, kernel, variant)

    def facts(self) -> list[c.Command]:
        """`KernelCompiled` facts for the identical compiles finished since the last boundary.

        Recorded before the boundary's lifecycle commands (after its facts), so the switch
        precedes anything those do to the seed, e.g. a cull. Their ids come from their own
        source ("compiler"): when a compile finishes must not shift the other ids.
        """
        if self.compiler is None or self.t.replay_source is not None:
            return []
        self.failed += self.compiler.failures()
        kernels = self._kernels()
        for done in self.compiler.ready():
            key = (done.seed, done.kernel_id, done.variant)
            kernel = kernels.get(done.seed)
            if key not in self._requested or kernel is None or kernel.kernel_id != done.kernel_id:
                continue
            if done.identical:
                self._finished[key] = done
            else:
                self.rejected.append(done)
        facts: list[c.Command] = []
        for _, done in sorted(self._finished.items()):
            event = ev.KernelCompiled(**describe(done), step=self.t.step)
            command_id = self.t.id_sources["compiler"]()
            facts.append(c.RecordFact(command_id=command_id, step=self.t.step, event=event))
        return facts

    def switch(self, kernel: Kernel, event: ev.KernelCompiled) -> None:
        """The projector met a `KernelCompiled`: run that variant compiled from now on."""
        if event.variant is None:
            # A v1 switch (old in-process compiler) names no variant and its numbers differed
            # from eager; there is nothing to reproduce it with, so it is left eager.
            return
        variant = Variant.from_dict(event.variant)
        key = (event.seed, event.kernel_id, variant)
        self._requested.add(key)
        done = self._finished.pop(key, None)
        if done is None:
            if not self.enabled:
                return  # identical to eager: compile off replays the same numbers eagerly
            # Re-executing a log: compile synchronously here (replay only; live training
            # records a switch only once its compile has finished).
            try:
                done = self._start().compile_now(kernel, variant)
            except Exception as exc:
                self.failed.append((event.seed, f"{type(exc).__name__}: {exc}"))
                return
            if not done.identical:
                # Not identical here (another compiler, another CPU): the eager kernel
                # computes the recorded numbers, so it serves this variant instead.
                self.rejected.append(done)
                return
        install(kernel, done)

    def calls(self) -> dict[str, int]:
        """Kernel calls so far that ran compiled and eager, over the live kernels."""
        total = {"compiled": 0, "eager": 0}
        for kernel in self._kernels().values():
            d = dispatch_of(kernel)
            if d is not None:
                for k, n in d.calls.items():
                    total[k] += n
        return total

    def close(self) -> None:
        """Stop the worker process (a compile in progress is abandoned)."""
        if self.compiler is not None:
            self.compiler.close()
            self.compiler = None
        self._finished.clear()
        self._requested.clear()
