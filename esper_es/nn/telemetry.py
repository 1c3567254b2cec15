"""Telemetry the lifecycle gates and the controller read, measured cheaply and without side effects.

- **Seed's own training signal** (gate of `start_grafting`): the task loss of the model with
  that one seed blended at full weight (alpha 1, every other seed as it is), tracked as an EMA
  from the step its TRAINING began. `improvement = (first EMA - current EMA) / first EMA`.
  The same batch's loss without the seed is tracked too, so `advantage = (without - with) /
  without` separates the seed's own merit from the host getting better meanwhile.
- **Gradient-norm ratio**: ‖grad of the seed's kernel‖ / ‖grad of the host's parameters‖, read
  after a backward pass.
- **Counterfactual contribution** (SPEC §2): metric with the seed at its alpha minus the metric
  with that seed's alpha forced to 0.

Every measurement runs under `torch.no_grad()` in eval mode with the global RNG forked, then
restores the modules' train/eval flags: it changes no parameter, buffer, gradient or RNG stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from esper_es.nn.modes import eval_mode
from esper_es.nn.placement import find_seed_layers
from esper_es.nn.resumable import capturing, output_from, resumable_layers
from esper_es.nn.seed_layer import SeedLayer

#: metric(model, batch) -> a number; higher is better for contributions (e.g. accuracy, -loss).
Metric = Callable[[nn.Module, Any], float]
#: loss(model, batch) -> a scalar tensor or float; lower is better.
LossFn = Callable[[nn.Module, Any], "Tensor | float"]
#: The same loss from the model's output: (output, batch) -> a scalar tensor.
OutputLoss = Callable[[Tensor, Any], Tensor]


@contextmanager
def quiet_eval(model: nn.Module) -> Iterator[None]:
    """No autograd, eval mode, forked RNG; train/eval flags restored on exit."""
    with eval_mode(model), torch.no_grad(), torch.random.fork_rng(devices=[]):
        yield


def _locate(model: nn.Module, seed: str) -> tuple[SeedLayer, int]:
    layer_name = seed.rpartition("/")[0]
    layer = find_seed_layers(model).get(layer_name)
    if layer is None:
        raise KeyError(f"no seed layer {layer_name!r} in the model")
    return layer, layer.index_of(seed)


def counterfactual_contribution(
    model: nn.Module,
    seed: str,
    batch: Any,
    metric: Metric,
    output_metric: Callable[[Tensor, Any], float] | None = None,
) -> float:
    """metric(seed at its alpha) - metric(seed's alpha forced to 0), side-effect free.

    Given `output_metric` (the same metric from the model's output) and a host that can resume
    its forward at the seed's point (`nn.resumable`), the second pass starts from the
    activation the first computed there (both eval mode, no autograd, the same weights: the
    same bits), so the layers before the point run once.
    """
    layer, index = _locate(model, seed)
    points = resumable_layers(model, [layer]) if output_metric is not None else []
    with quiet_eval(model):
        with capturing(points) as starts:
            with_seed = float(metric(model, batch))
        start = starts.get(layer.name)
        with layer.override_alphas({index: 0.0}):
            if start is None or output_metric is None:
                without = float(metric(model, batch))
            else:
                without = float(output_metric(output_from(model, layer, start), batch))
    return with_seed - without


def seed_losses(model: nn.Module, seed: str, batch: Any, loss: LossFn) -> tuple[float, float]:
    """(loss with `seed` at full weight, loss as the model stands), side-effect free."""
    layer, index = _locate(model, seed)
    if layer.kernel(index) is None:
        raise ValueError(f"seed {seed} holds no kernel")
    with quiet_eval(model):
        without = float(loss(model, batch))
        with layer.override_alphas({index: 1.0}):
            with_seed = float(loss(model, batch))
    return with_seed, without


def _grad_sq(params: Iterator[nn.Parameter] | list[nn.Parameter]) -> float:
    total = 0.0
    for p in params:
        if p.grad is not None:
            total += float(p.grad.detach().double().pow(2).sum())
    return total


def grad_norm_ratios(model: nn.Module) -> dict[str, float]:
    """Per seed holding a kernel: its gradient norm ÷ the host's (inf if the host's is 0)."""
    kernel_params: dict[str, list[nn.Parameter]] = {}
    for layer in find_seed_layers(model).values():
        for i, seed in enumerate(layer.seed_ids()):
            k = layer.kernel(i)
            if k is not None:
                kernel_params[seed] = list(k.parameters())
    in_kernels = {id(p) for ps in kernel_params.values() for p in ps}
    host = math.sqrt(_grad_sq([p for p in model.parameters() if id(p) not in in_kernels]))
    ratios = {}
    for seed, params in kernel_params.items():
        own = math.sqrt(_grad_sq(params))
        ratios[seed] = own / host if host > 0 else (0.0 if own == 0 else math.inf)
    return ratios


@attrs.define
class SeedSignal:
    """EMAs of one seed's own loss (full weight) and the loss without it, since TRAINING began."""

    decay: float = 0.9
    first: float | None = None
    ema_with: float | None = None
    ema_without: float | None = None
    updates: int = 0

    def update(self, with_seed: float, without: float) -> None:
        """Fold one measurement into the EMAs; the first one also fixes the baseline."""
        if self.ema_with is None or self.ema_without is None:
            self.ema_with, self.ema_without, self.first = with_seed, without, with_seed
        else:
            d = self.decay
            self.ema_with = d * self.ema_with + (1 - d) * with_seed
            self.ema_without = d * self.ema_without + (1 - d) * without
        self.updates += 1

    @property
    def improvement(self) -> float:
        """(first EMA - current EMA) / first EMA of the seed's own loss; 0 before two updates."""
        if self.first is None or self.ema_with is None or self.first == 0:
            return 0.0
        return (self.first - self.ema_with) / abs(self.first)

    @property
    def advantage(self) -> float:
        """(EMA without - EMA with) / EMA without: how much the seed helps right now."""
        if self.ema_with is None or not self.ema_without:
            return 0.0
        return (self.ema_without - self.ema_with) / abs(self.ema_without)


@attrs.define
class SeedTelemetry:
    """Tracks every seed's own training signal; reset a seed when its TRAINING starts."""

    decay: float = 0.9
    signals: dict[str, SeedSignal] = attrs.field(factory=dict)
    reduce: Callable[[tuple[float, float]], tuple[float, float]] | None = None
    """Averages a measurement over the ranks of a data-parallel run before it is folded in."""

    def reset(self, seed: str) -> None:
        """Forget `seed`'s history (call on SeedTrainingStarted)."""
        self.signals[seed] = SeedSignal(self.decay)

    def record(self, seed: str, with_seed: float, without: float) -> SeedSignal:
        """Fold one measurement of `seed` (its own loss, the loss without it) into its signal."""
        measured = (with_seed, without)
        if self.reduce is not None:
            measured = self.reduce(measured)
        signal = self.signals.setdefault(seed, SeedSignal(self.decay))
        signal.update(*measured)
        return signal

    def observe(self, model: nn.Module, seed: str, batch: Any, loss: LossFn) -> SeedSignal:
        """Measure `seed`'s losses on `batch` (see `seed_losses`) and fold them in."""
        return self.record(seed, *seed_losses(model, seed, batch, loss))

    def observe_all(
        self,
        model: nn.Module,
        seeds: Sequence[str],
        batch: Any,
        loss: LossFn,
        output_loss: OutputLoss | None = None,
    ) -> None:
        """`observe` each of `seeds` on `batch`, measuring the loss without them once.

        The model as it stands is the same for every seed, so its loss is too: one forward
        pass instead of one per seed. Each seed's own pass starts from the RNG state its
        `observe` would have seen, so the results are the same bits. Given `output_loss` (the
        same loss from the model's output) and a host that can resume its forward at a seed's
        point (`nn.resumable`), that seed's pass starts from the activation the pass without
        the seeds computed there: both run in eval mode without autograd on the same weights,
        so it is the same activation, and the layers before the point are not run again.
        """
        if not seeds:
            return
        located = [(seed, *_locate(model, seed)) for seed in seeds]
        for seed, layer, index in located:
            if layer.kernel(index) is None:
                raise ValueError(f"seed {seed} holds no kernel")
        points = []
        if output_loss is not None:
            points = resumable_layers(model, (layer for _, layer, _ in located))
        with quiet_eval(model):
            with capturing(points) as starts:
                without = float(loss(model, batch))
            for seed, layer, index in located:
                start = starts.get(layer.name)
                with torch.random.fork_rng(devices=[]), layer.override_alphas({index: 1.0}):
                    if start is None or output_loss is None:
                        with_seed = float(loss(model, batch))
                    else:
                        with_seed = float(output_loss(output_from(model, layer, start), batch))
                self.record(seed, with_seed, without)

    def improvement(self, seed: str) -> float:
        """The seed's relative improvement since its TRAINING began (0 if never observed)."""
        s = self.signals.get(seed)
        return s.improvement if s is not None else 0.0
