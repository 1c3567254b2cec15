"""The seeds' own pass: each TRAINING kernel learns from the loss with it blended at alpha 1.

The straight-through gradient `isolation.isolated` hands a TRAINING kernel is dL/dh at the
host's own activation h, which the kernel's output never moves: with no feedback the kernel
keeps following it (measured on digits: the seed's paired advantage goes negative, i.e.
blending it would hurt). So it is replaced by the gradient of the seed's own loss, L(h + k(h)),
taken with respect to the kernel's parameters only (`autograd.grad` accumulates nothing into
the host's `.grad`, and the pass runs in eval mode, so no module's training-mode behaviour
runs): the host's outputs and gradients stay exactly as without the seed (L8).

Where the host can resume its forward at the seed's point (`nn.resumable`), the pass starts
from the activation the step's training pass computed there instead of recomputing every layer
before it: the same bits (the corpus replays unchanged), minus the prefix's forward. On a
width-4 digits host a `layer2` seed's pass then runs its kernel, the pool and the head only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from esper_es.core.lifecycle import Stage
from esper_es.nn.modes import eval_mode
from esper_es.nn.resumable import (
    ResumableHost,
    mode_independent_kernels,
    output_from,
    resumable_layers,
)
from esper_es.nn.seed_layer import SeedLayer
from esper_es.trainer.tasks import output_loss

__all__ = ["OwnPass", "output_loss", "training_slots"]

if TYPE_CHECKING:
    from esper_es.trainer.loop import Trainer

Batch = Any
#: A loss computed from the model's output: (output, batch) -> scalar.
OutputLoss = Callable[[Tensor, Batch], Tensor]
#: (seed layer, slot) of each TRAINING seed, in layer and slot order.
TrainingSeeds = list[tuple[SeedLayer, int]]


def training_slots(t: Trainer) -> TrainingSeeds:
    """Every TRAINING seed, whatever trains it."""
    return [(ly, i) for ly in t.layers.values() for i in ly.kernel_slots(Stage.TRAINING)]


class OwnPass:
    """Runs the seeds' own pass; knows when it may start at a seed point instead of the input."""

    def __init__(self, output_loss: OutputLoss | None) -> None:
        #: The trainer's loss as a function of the model's output, when it is one of the
        #: built-in losses (`tasks.output_loss`); a user's loss may call the model otherwise.
        self.output_loss = output_loss
        self._checked_at: int | None = None
        self._resumes = False

    def training_seeds(self, t: Trainer) -> TrainingSeeds:
        """The TRAINING seeds, if the run trains them on their own loss (else none)."""
        if t.config.train.seed_training != "own_loss":
            return []
        return training_slots(t)

    def resumes(self, t: Trainer) -> bool:
        """Whether the pass may start at the seed points (checked once per architecture)."""
        seq = t.projector.last_seq
        if self._checked_at != seq:
            # Compiled kernels run per-mode variants, which need not give eager's bits.
            self._resumes = (
                self.output_loss is not None
                and isinstance(t.model, ResumableHost)
                and not t.config.library.compile
                and mode_independent_kernels(t.model)
            )
            self._checked_at = seq
        return self._resumes

    def start_points(self, t: Trainer, training: TrainingSeeds) -> list[SeedLayer]:
        """The layers whose seeds train and at whose point the pass may start (`capturing`)."""
        if not training or not self.resumes(t):
            return []
        return resumable_layers(t.model, (layer for layer, _ in training))

    def run(
        self,
        t: Trainer,
        batch: Batch,
        training: TrainingSeeds,
        starts: Mapping[str, Tensor],
        measure: bool = False,
    ) -> tuple[float, list[tuple[str, float]]]:
        """Give each of `training` the gradient of its own loss; with `measure`, the signals.

        With `measure` it also returns the seed signals' measurement of this batch
        (`driver.signal_pass = "shared"`): the loss of the model as it stands, and each seed's
        own loss, which is the value this pass computes anyway.
        """
        signals: list[tuple[str, float]] = []
        without = math.nan
        if not training:
            return without, signals
        with eval_mode(t.model):
            if measure:
                with torch.no_grad(), torch.random.fork_rng(devices=[]):
                    without = float(self._loss_without(t, batch, starts))
            for layer, i in training:
                kernel = layer.kernel(i)
                assert kernel is not None  # a TRAINING slot holds its kernel (L4)
                params = [p for p in kernel.parameters() if p.requires_grad]
                own = self._own_loss(t, batch, layer, i, starts.get(layer.name))
                if measure:
                    signals.append((layer.seed_ids()[i], float(own.detach())))
                grads = torch.autograd.grad(own, params, allow_unused=True)
                for p, g in zip(params, grads, strict=True):
                    p.grad = None if g is None else g.detach()
        return without, signals

    def _loss_without(self, t: Trainer, batch: Batch, starts: Mapping[str, Tensor]) -> Tensor:
        """The loss of the model as it stands (TRAINING kernels are out of its forward here:
        `isolated_training` is off). From a seed point where the pass may start, it is the
        training pass's activation there through the rest of the host: the same bits as from
        the input (`nn.resumable`), minus the layers before it. It takes the last such point
        in `t.layers` order (placement order, the host's order for the built-in configs)."""
        if self.output_loss is not None:
            for layer in reversed(t.layers.values()):
                start = starts.get(layer.name)
                if start is not None:
                    return self.output_loss(output_from(t.model, layer, start), batch)
        loss: Tensor = t.loss_fn(t.model, batch)
        return loss

    def _own_loss(
        self, t: Trainer, batch: Batch, layer: SeedLayer, i: int, start: Tensor | None
    ) -> Tensor:
        with layer.override_alphas({i: 1.0}):
            if start is None or self.output_loss is None:
                loss: Tensor = t.loss_fn(t.model, batch)
                return loss
            return self.output_loss(output_from(t.model, layer, start), batch)
