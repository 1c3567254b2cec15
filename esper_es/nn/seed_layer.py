"""The seed layer: N seed slots at one point of the host, the identity while nothing blends.

Output = host activation + Σ alphaᵢ · kernelᵢ(host activation). A seed in TRAINING contributes
nothing to the output but learns through `isolation.isolated`; a seed in a blending stage with
alpha 0 is skipped, so with every alpha at 0 the layer returns its input tensor itself.

Stages, alphas and blend targets are buffers, so the model's `state_dict` (and therefore its
fingerprint, SPEC §7) covers them; Python mirrors of them drive `forward`, so a dormant layer
costs one attribute test. Alphas are kept in float64 (the exact values the log records) even if
the model is cast with `.half()`/`.float()`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

import torch
from torch import Tensor, nn

from esper_es.core.commands import RegisterSeedLayer
from esper_es.core.lifecycle import BLENDING_STAGES, KERNEL_STAGES, Stage
from esper_es.nn.blueprints import SHAPE_KINDS, fitting_blueprints
from esper_es.nn.isolation import isolated
from esper_es.nn.kernels import Kernel

#: Stage <-> small integer code stored in the `stages` buffer (the enum's declaration order).
STAGE_CODES: Final = {stage: code for code, stage in enumerate(Stage)}
STAGES_BY_CODE: Final = tuple(Stage)

#: One entry of the forward plan: seed index, kernel, alpha (None: isolated training).
PlanEntry = tuple[int, Kernel, float | None]


class ActivationCapture:
    """The activation a seed layer last received while `on` (its hook keeps it; `take` reads it).

    The trainer switches it on for its training pass, so a TRAINING seed's own pass can start
    from the activation at its point instead of recomputing the layers before it
    (`nn.resumable`). `take` returns it only if nothing has changed it in place since.
    """

    __slots__ = ("on", "tensor", "version")

    def __init__(self) -> None:
        self.on = False
        self.tensor: Tensor | None = None
        self.version = 0

    def keep(self, tensor: Tensor) -> None:
        """Hold `tensor` (no copy) and its in-place version counter."""
        self.tensor, self.version = tensor, tensor._version

    def take(self) -> Tensor | None:
        """The kept activation, detached, unless it was modified in place; forgets it."""
        tensor, self.tensor = self.tensor, None
        if tensor is None or tensor._version != self.version:
            return None
        return tensor.detach()


class SeedPoint:
    """Where a seed layer runs: its forward hook on the host's module, there only while needed.

    A module with any forward hook takes `Module.__call__`'s slow path: ~4-6 µs a call in a
    training step (B1, a width-4 CNN's step with two dormant seed points: 1.012-1.019 against
    1.000 without their hooks). The hook is needed only while the layer holds a kernel (to blend
    it, or to capture the activation its own pass starts from), so it is taken off the module
    while the layer holds none and put back, at its place among the module's other forward
    hooks, when a kernel arrives: dormant seed points cost nothing.
    """

    __slots__ = ("hook", "hook_id", "module")

    def __init__(self, module: nn.Module, hook: Any, hook_id: int) -> None:
        self.module = module
        self.hook = hook
        self.hook_id = hook_id

    def sync(self, needed: bool) -> None:
        """Put the hook on the module, or take it off, as `needed` says."""
        hooks = self.module._forward_hooks
        if needed == (self.hook_id in hooks):
            return
        if not needed:
            del hooks[self.hook_id]
            return
        hooks[self.hook_id] = self.hook
        # Hooks run in registration order and handle ids grow with it: the ones registered
        # after this one go back behind it.
        later = [k for k in hooks if k > self.hook_id]
        hooks.update({k: hooks.pop(k) for k in later})


class SeedLayer(nn.Module):
    """N seed slots on one activation of kind image (B,C,H,W), sequence (B,T,C) or vector (B,C)."""

    alphas: Tensor
    blend_targets: Tensor
    stages: Tensor

    def __init__(
        self,
        name: str,
        shape_kind: str,
        channels: int,
        num_seeds: int,
        blueprints: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if shape_kind not in SHAPE_KINDS:
            raise ValueError(f"shape kind {shape_kind!r} is not one of {', '.join(SHAPE_KINDS)}")
        if channels < 1 or num_seeds < 1:
            raise ValueError("channels and num_seeds must be at least 1")
        self.name = name
        self.shape_kind = shape_kind
        self.channels = int(channels)
        self.num_seeds = int(num_seeds)
        if blueprints is None:
            blueprints = fitting_blueprints(shape_kind, channels)
        self.blueprints = tuple(sorted(set(blueprints)))
        self.kernels = nn.ModuleDict()
        self.register_buffer("alphas", torch.zeros(num_seeds, dtype=torch.float64))
        self.register_buffer("blend_targets", torch.zeros(num_seeds, dtype=torch.float64))
        self.register_buffer(
            "stages", torch.full((num_seeds,), STAGE_CODES[Stage.DORMANT], dtype=torch.int8)
        )
        self._stage: list[Stage] = [Stage.DORMANT] * num_seeds
        self._alpha: list[float] = [0.0] * num_seeds
        self._target: list[float] = [0.0] * num_seeds
        self._override: dict[int, float] = {}
        self._isolated_training = True
        self._plan: tuple[PlanEntry, ...] = ()
        self._seed_ids = tuple(f"{name}/{i}" for i in range(self.num_seeds))
        self.capture = ActivationCapture()
        self._point: SeedPoint | None = None
        self.register_load_state_dict_post_hook(_after_load)  # type: ignore[no-untyped-call]

    # --- slots ----------------------------------------------------------------------------

    def seed_ids(self) -> tuple[str, ...]:
        """Ids of this layer's seeds, `<layer>/<index>`."""
        return self._seed_ids

    def index_of(self, seed: str) -> int:
        """Slot index of seed id `<layer>/<index>`; raises KeyError for another layer's seed."""
        layer, _, index = seed.rpartition("/")
        if layer != self.name or not index.isdigit() or int(index) >= self.num_seeds:
            raise KeyError(f"seed {seed!r} is not a slot of seed layer {self.name!r}")
        return int(index)

    def stage(self, index: int) -> Stage:
        """The stage of slot `index`."""
        return self._stage[index]

    def kernel_slots(self, stage: Stage) -> list[int]:
        """Ascending indices of the slots holding a kernel in `stage`.

        Walks the kernels, not the slots: a layer of 128 dormant slots costs nothing here.
        """
        return sorted(i for i in map(int, self.kernels._modules) if self._stage[i] is stage)

    def alpha(self, index: int) -> float:
        """The blend factor of slot `index`."""
        return self._alpha[index]

    def blend_target(self, index: int) -> float:
        """The alpha slot `index` ramps towards."""
        return self._target[index]

    def kernel(self, index: int) -> Kernel | None:
        """The kernel slot `index` holds, if any."""
        k = self.kernels._modules.get(str(index))
        return k if isinstance(k, Kernel) else None

    def set_kernel(self, index: int, kernel: Kernel | None) -> None:
        """Load `kernel` into slot `index`, or free the slot's kernel with None."""
        self._check_index(index)
        key = str(index)
        if kernel is None:
            if key in self.kernels:
                del self.kernels[key]
        else:
            if kernel.spec.shape_kind != self.shape_kind or kernel.spec.channels != self.channels:
                raise ValueError(
                    f"kernel for {kernel.spec.shape_kind}:{kernel.spec.channels} cannot sit in "
                    f"seed layer {self.name!r} ({self.shape_kind}:{self.channels})"
                )
            self.kernels[key] = kernel
        self._replan()
        if self._point is not None:
            self._point.sync(bool(self.kernels._modules))

    def attach_point(self, point: SeedPoint) -> None:
        """Run at `point` (`placement.attach_seed_layer`); its hook is on only while needed."""
        self._point = point
        point.sync(bool(self.kernels._modules))

    def set_stage(self, index: int, stage: Stage) -> None:
        """Set slot `index`'s stage (the projector keeps it equal to the folded state)."""
        self._check_index(index)
        self._put_stage(index, stage)
        self._replan()

    def set_alpha(self, index: int, alpha: float) -> None:
        """Set slot `index`'s blend factor; L3 is enforced here too."""
        self._check_index(index)
        self._put_alpha(index, self._checked_alpha(index, alpha, self._stage[index]))
        self._replan()

    def set_blend_target(self, index: int, target: float) -> None:
        """Set the alpha slot `index` ramps towards."""
        self._check_index(index)
        self._put_target(index, float(target))

    def set_slot(self, index: int, stage: Stage, alpha: float, target: float) -> None:
        """`set_stage`, `set_alpha`, `set_blend_target` in turn: the same checks and end state.

        The projector's path: a boundary projects one event per blending seed per step, and
        usually one of the three changes (a `BlendAdjusted`: the alpha). Only what changes is
        written and the forward plan is rebuilt at most once.
        """
        self._check_index(index)
        alpha = self._checked_alpha(index, alpha, stage)
        replan = stage is not self._stage[index] or not _same(alpha, self._alpha[index])
        if stage is not self._stage[index]:
            self._put_stage(index, stage)
        if not _same(alpha, self._alpha[index]):
            self._put_alpha(index, alpha)
        target = float(target)
        if not _same(target, self._target[index]):
            self._put_target(index, target)
        if replan:
            self._replan()

    def _checked_alpha(self, index: int, alpha: float, stage: Stage) -> float:
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha {alpha!r} of {self.name}/{index} is outside [0, 1]")
        if alpha != 0.0 and stage not in BLENDING_STAGES:
            raise ValueError(f"alpha of {self.name}/{index} must be 0 in {stage.value} (L3)")
        return alpha

    # Each slot value lives twice: in a Python mirror that `forward` reads and in a buffer that
    # `state_dict` (the fingerprint, SPEC §7) covers. The buffer is written through a NumPy view
    # of its memory where it is on the CPU: an indexed tensor write goes through the dispatcher
    # and lets go of the GIL, which a boundary's background commit (`store.commit_writer`) then
    # takes, so each one could stall the projection for a GIL hand-off (~0.2 ms measured).

    def _put_stage(self, index: int, stage: Stage) -> None:
        self._stage[index] = stage
        _write(self.stages, index, STAGE_CODES[stage])

    def _put_alpha(self, index: int, alpha: float) -> None:
        self._alpha[index] = alpha
        _write(self.alphas, index, alpha)

    def _put_target(self, index: int, target: float) -> None:
        self._target[index] = target
        _write(self.blend_targets, index, target)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.num_seeds:
            raise IndexError(f"seed layer {self.name!r} has no slot {index}")

    # --- forward --------------------------------------------------------------------------

    @property
    def isolated_training(self) -> bool:
        """Whether TRAINING kernels run in the forward pass, isolated (L8), to get a gradient.

        A trainer that gives them the gradient of their own loss instead (`seed_training =
        "own_loss"`) turns this off: their isolated forward and backward would be thrown away.
        Either way they add nothing to the output, and the host's gradients are the same bits.
        """
        return self._isolated_training

    @isolated_training.setter
    def isolated_training(self, on: bool) -> None:
        self._isolated_training = bool(on)
        self._replan()

    def _replan(self) -> None:
        plan: list[PlanEntry] = []
        # Walks the kernels, not the slots (dormant slots cost nothing), in ascending slot
        # order: the order the seeds' outputs are summed in.
        for i in sorted(map(int, self.kernels._modules)):
            k = self.kernel(i)
            if k is None:
                continue
            stage = self._stage[i]
            if i in self._override:
                alpha: float | None = self._override[i]
            elif stage is Stage.TRAINING:
                if not self._isolated_training:
                    continue
                alpha = None
            elif stage in BLENDING_STAGES:
                alpha = self._alpha[i]
            else:
                continue  # GERMINATED: loaded, not yet learning
            if alpha is not None and alpha == 0.0:
                continue  # exactly nothing to add; skipping keeps the identity bit-exact
            plan.append((i, k, alpha))
        self._plan = tuple(plan)

    @property
    def active(self) -> bool:
        """Whether any seed currently changes the forward or backward pass."""
        return bool(self._plan)

    def forward(self, x: Tensor) -> Tensor:
        """x + Σ alphaᵢ · kernelᵢ(x); `x` itself when no seed is active."""
        if not self._plan:
            return x
        return self.run_seeds(x)

    def run_seeds(self, x: Tensor) -> Tensor:
        """The seeds' part of `forward`, for a caller that already checked `active`."""
        out = x
        detached: Tensor | None = None
        for _, kernel, alpha in self._plan:
            if alpha is None:
                # Isolated training adds nothing to the output; without autograd it is moot.
                if not torch.is_grad_enabled():
                    continue
                if detached is None:
                    detached = x.detach()
                out = isolated(out, kernel(detached))
            else:
                out = out + alpha * kernel(x)
        return out

    @contextmanager
    def override_alphas(self, alphas: dict[int, float]) -> Iterator[None]:
        """Temporarily blend the given slots at the given alphas (no state or buffer changes)."""
        for i in alphas:
            self._check_index(i)
        saved = self._override
        self._override = {**saved, **{i: float(a) for i, a in alphas.items()}}
        self._replan()
        try:
            yield
        finally:
            self._override = saved
            self._replan()

    # --- bookkeeping ----------------------------------------------------------------------

    def summary(self) -> list[dict[str, Any]]:
        """Each slot as a JSON-able dict: seed, stage, kernel id, blueprint, alpha, target."""
        rows = []
        for i in range(self.num_seeds):
            k = self.kernel(i)
            rows.append(
                {
                    "seed": f"{self.name}/{i}",
                    "stage": self._stage[i].value,
                    "kernel_id": k.kernel_id if k is not None else None,
                    "blueprint": k.blueprint if k is not None else None,
                    "alpha": self._alpha[i],
                    "blend_target": self._target[i],
                }
            )
        return rows

    def register_command(self, command_id: str, step: int = 0) -> RegisterSeedLayer:
        """The command that records this layer's placement in the log."""
        return RegisterSeedLayer(
            command_id=command_id,
            step=step,
            layer=self.name,
            shape_kind=self.shape_kind,
            channels=self.channels,
            num_seeds=self.num_seeds,
            blueprints=self.blueprints,
        )

    def _apply(self, fn: Any, recurse: bool = True) -> SeedLayer:
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        # Dtype casts (`.half()`, `.float()`) must not round the logged alphas.
        for name, values in (("alphas", self._alpha), ("blend_targets", self._target)):
            buf = self._buffers[name]
            if buf is not None and buf.dtype != torch.float64:
                self._buffers[name] = torch.tensor(values, dtype=torch.float64, device=buf.device)
        return self

    def extra_repr(self) -> str:
        """Name, shape and a compact view of the slots."""
        slots = ", ".join(f"{s.value}:{a:g}" for s, a in zip(self._stage, self._alpha, strict=True))
        return f"name={self.name!r}, {self.shape_kind}:{self.channels}, seeds=[{slots}]"


def _same(a: float, b: float) -> bool:
    """Whether two floats have the same bits (0.0 and -0.0 differ, as in a buffer)."""
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def _write(buffer: Tensor, index: int, value: float) -> None:
    """`buffer[index] = value`, through a NumPy view where the buffer lives on the CPU."""
    if buffer.device.type == "cpu" and not buffer.requires_grad:
        buffer.numpy()[index] = value
    else:
        buffer[index] = value


def _after_load(module: nn.Module, incompatible: Any) -> None:
    """Refresh the Python mirrors from freshly loaded buffers, and check kernels match stages."""
    assert isinstance(module, SeedLayer)
    module._alpha = [float(a) for a in module.alphas.tolist()]
    module._target = [float(t) for t in module.blend_targets.tolist()]
    module._stage = [STAGES_BY_CODE[int(c)] for c in module.stages.tolist()]
    for i, stage in enumerate(module._stage):
        if (stage in KERNEL_STAGES) != (module.kernel(i) is not None):
            raise RuntimeError(
                f"loaded state puts {module.name}/{i} in {stage.value}, but the slot "
                f"{'lacks' if stage in KERNEL_STAGES else 'holds'} a kernel; project the events "
                "first so the architecture matches, then load the weights"
            )
    module._replan()
