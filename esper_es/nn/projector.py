"""The projector: applies the log's events to the live model and its optimizer, exactly once.

Each event is first folded into the core state with `esper_es.core.decider.evolve` (so an
event that cannot follow the seed's state is refused exactly as replay would refuse it), then
the live seed slot is made to match the folded state: kernel loaded or freed (L4), stage,
alpha and blend target copied. Events it does not project (run, controller, checkpoints) only
advance its position.

Optimizer bookkeeping: each germinated kernel gets its own param group, appended in seq order
and tagged with `seed` and `kernel_id`; freeing a kernel deletes its group and its
`optimizer.state` entries, so no reference to its parameters survives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from esper_es.core import events as ev
from esper_es.core.decider import evolve, layer_of
from esper_es.core.lifecycle import KERNEL_STAGES
from esper_es.core.state import LayerState, SeedState
from esper_es.errors import EsperError
from esper_es.nn.errors import KernelMismatch, ProjectionError
from esper_es.nn.kernels import Kernel, KernelSpec, build_kernel_from_spec, kernel_spec
from esper_es.nn.placement import attach_seed_layer, find_seed_layers
from esper_es.nn.seed_layer import SeedLayer


class Projector:
    """Applies `(seq, event)` pairs to a model (and optionally its optimizer) in order, once."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        kernel_specs: Mapping[str, KernelSpec] | None = None,
        group_options: Mapping[str, Any] | None = None,
        strict_kernel_ids: bool = True,
        last_seq: int = 0,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.kernel_specs = dict(kernel_specs or {})
        self.group_options = dict(group_options or {})
        self.strict_kernel_ids = strict_kernel_ids
        self.last_seq = last_seq
        self.layers: dict[str, SeedLayer] = find_seed_layers(model)
        self.layer_states: dict[str, LayerState] = {}
        self.seeds: dict[str, SeedState] = {}
        #: Called with the seed's kernel when a `KernelCompiled` is projected (the trainer
        #: switches the kernel to its compiled form); without it the event changes nothing.
        self.on_kernel_compiled: Callable[[Kernel, ev.KernelCompiled], None] | None = None
        #: Called with every event once projected, in seq order (e.g. the trainer's outcome
        #: tracker): whoever folds the log this way sees what the model saw, on every path.
        self.observers: list[Callable[[ev.Event], None]] = []
        #: Called with `(seq, event, after)` for each event `apply_visible` projected: rank 0
        #: of a data-parallel run sends them on (`esper_es.trainer.distributed`).
        self.on_apply: Callable[[int, ev.Event, int], None] | None = None

    # --- the entry points -----------------------------------------------------------------

    def apply(self, seq: int, event: ev.Event) -> bool:
        """Project one event; False if `seq` was already applied, ProjectionError on a gap."""
        if seq <= self.last_seq:
            return False
        if seq != self.last_seq + 1:
            raise ProjectionError(seq, f"expected seq {self.last_seq + 1} (a gap in the log)")
        try:
            self._project(event)
        except EsperError:
            raise
        except (KeyError, ValueError, RuntimeError) as exc:
            raise ProjectionError(seq, f"{type(event).__name__}: {exc}") from exc
        self.last_seq = seq
        for observe in self.observers:
            observe(event)
        return True

    def apply_visible(self, seq: int, event: ev.Event, *, after: int) -> bool:
        """Project one event read from a branch's view, `after` being the seq before it there.

        On a branch the visible seqs jump at its fork point (and wherever other branches
        appended in between): the caller vouches, by reading one branch's view in order, that
        no seq between `after` and `seq` is visible on it. The projector still refuses a jump
        from anywhere but its own position, so no visible event is ever skipped.
        """
        if seq <= self.last_seq:
            return False
        if after != self.last_seq or seq <= after:
            raise ProjectionError(
                seq, f"expected the event after seq {self.last_seq}, got one after {after}"
            )
        self.last_seq = seq - 1
        try:
            applied = self.apply(seq, event)
        except BaseException:
            self.last_seq = after
            raise
        if self.on_apply is not None:
            self.on_apply(seq, event, after)
        return applied

    def apply_all(self, pairs: Iterable[tuple[int, ev.Event]]) -> int:
        """Project every pair in order; returns how many were applied (not skipped)."""
        return sum(1 for seq, event in pairs if self.apply(seq, event))

    def seed_state(self, seed: str) -> SeedState:
        """The folded state of `seed` (DORMANT if no event has touched it)."""
        return self.seeds.get(seed) or SeedState.dormant(seed)

    def param_group(self, seed: str) -> dict[str, Any] | None:
        """The optimizer param group holding `seed`'s kernel, if any."""
        if self.optimizer is None:
            return None
        for group in self.optimizer.param_groups:
            if group.get("seed") == seed:
                return group
        return None

    # --- projection -----------------------------------------------------------------------

    def _project(self, event: ev.Event) -> None:
        if isinstance(event, ev.SeedLayerRegistered):
            self._register_layer(event)
            return
        if isinstance(event, ev.KernelCompiled):
            self._kernel_compiled(event)
            return
        if not isinstance(event, ev.SeedEvent):
            return
        layer = self._layer_for(event.seed)
        index = layer.index_of(event.seed)
        before = self.seed_state(event.seed)
        after = evolve(before, event)
        had, has = before.stage in KERNEL_STAGES, after.stage in KERNEL_STAGES
        if isinstance(event, ev.SeedGerminated):
            kernel = self._build(layer, event)
            layer.set_stage(index, after.stage)
            layer.set_kernel(index, kernel)
            self._add_group(event.seed, kernel)
        elif had and not has:
            self._free(layer, index, event.seed)
        layer.set_slot(index, after.stage, after.alpha, after.blend_target)
        self.seeds[event.seed] = after

    def _kernel_compiled(self, event: ev.KernelCompiled) -> None:
        if self.on_kernel_compiled is None:
            return
        layer = self._layer_for(event.seed)
        kernel = layer.kernel(layer.index_of(event.seed))
        if not isinstance(kernel, Kernel) or kernel.kernel_id != event.kernel_id:
            held = kernel.kernel_id if isinstance(kernel, Kernel) else "no kernel"
            raise ValueError(
                f"KernelCompiled for {event.kernel_id}, seed {event.seed} holds {held}"
            )
        self.on_kernel_compiled(kernel, event)

    def _register_layer(self, event: ev.SeedLayerRegistered) -> None:
        state = evolve(self.layer_states.get(event.layer), event)
        layer = self.layers.get(event.layer)
        if layer is None:
            layer = SeedLayer(
                event.layer, event.shape_kind, event.channels, event.num_seeds, event.blueprints
            )
            attach_seed_layer(self.model, event.layer, layer)
            self.layers[event.layer] = layer
        elif (layer.shape_kind, layer.channels, layer.num_seeds) != (
            event.shape_kind,
            event.channels,
            event.num_seeds,
        ):
            raise ValueError(
                f"seed layer {event.layer!r} in the model is {layer.shape_kind}:{layer.channels} "
                f"with {layer.num_seeds} seeds, the log registered {event.shape_kind}:"
                f"{event.channels} with {event.num_seeds}"
            )
        self.layer_states[event.layer] = state

    def _layer_for(self, seed: str) -> SeedLayer:
        name = layer_of(seed)
        layer = self.layers.get(name)
        if layer is None:
            raise KeyError(f"seed {seed!r} belongs to seed layer {name!r}, which is not placed")
        return layer

    def _build(self, layer: SeedLayer, event: ev.SeedGerminated) -> Kernel:
        spec = self.kernel_specs.get(event.kernel_id)
        if spec is None or (spec.shape_kind, spec.channels, spec.init_seed, spec.blueprint) != (
            layer.shape_kind,
            layer.channels,
            event.init_seed,
            event.blueprint,
        ):
            spec = kernel_spec(
                event.blueprint, layer.shape_kind, layer.channels, event.init_seed, event.config
            )
            if spec.kernel_id != event.kernel_id and self.strict_kernel_ids:
                raise KernelMismatch(event.seed, event.kernel_id, spec.kernel_id)
        ref = next(iter(layer.buffers()))
        dtype = _host_dtype(self.model)
        return build_kernel_from_spec(spec, dtype=dtype, device=ref.device)

    def _add_group(self, seed: str, kernel: Kernel) -> None:
        if self.optimizer is None:
            return
        if self.param_group(seed) is not None:
            raise RuntimeError(f"optimizer already has a param group for seed {seed}")
        group: dict[str, Any] = {"params": list(kernel.parameters()), **self.group_options}
        group.update(seed=seed, kernel_id=kernel.kernel_id)
        self.optimizer.add_param_group(group)

    def _free(self, layer: SeedLayer, index: int, seed: str) -> None:
        layer.set_kernel(index, None)
        if self.optimizer is None:
            return
        opt = self.optimizer
        kept = []
        for group in opt.param_groups:
            if group.get("seed") == seed:
                for p in group["params"]:
                    opt.state.pop(p, None)
                    p.grad = None
            else:
                kept.append(group)
        opt.param_groups[:] = kept


def _host_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()
