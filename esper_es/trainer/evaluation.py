"""Validation: the mean loss and metric of the model over the validation batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor, nn

from esper_es.nn.telemetry import quiet_eval
from esper_es.trainer.batches import batch_len

Batch = Any
#: (loss, metric) of one batch from a single forward pass.
LossAndMetric = Callable[[nn.Module, Batch], tuple[Tensor, float]]


def evaluate(
    model: nn.Module,
    batches: Iterator[Batch],
    loss_fn: Callable[[nn.Module, Batch], Tensor],
    metric_fn: Callable[[nn.Module, Batch], float] | None,
    loss_and_metric: LossAndMetric | None = None,
) -> tuple[float, float | None]:
    """(mean loss, mean metric) of `model` over `batches`, without side effects.

    `loss_and_metric`, when given, computes both from one forward pass (the built-in tasks):
    validation otherwise runs the model twice per batch.
    """
    loss_sum, metric_sum, total = evaluation_sums(
        model, batches, loss_fn, metric_fn, loss_and_metric
    )
    return means(loss_sum, metric_sum, total, metric_fn is not None)


def evaluation_sums(
    model: nn.Module,
    batches: Iterator[Batch],
    loss_fn: Callable[[nn.Module, Batch], Tensor],
    metric_fn: Callable[[nn.Module, Batch], float] | None,
    loss_and_metric: LossAndMetric | None = None,
) -> tuple[float, float, int]:
    """(loss sum, metric sum, examples) over `batches`: what the ranks of a run add up."""
    total, loss_sum, metric_sum = 0, 0.0, 0.0
    with quiet_eval(model):
        for batch in batches:
            n = batch_len(batch)
            if loss_and_metric is not None and metric_fn is not None:
                loss, metric = loss_and_metric(model, batch)
                loss_sum += float(loss) * n
                metric_sum += float(metric) * n
            else:
                loss_sum += float(loss_fn(model, batch)) * n
                if metric_fn is not None:
                    metric_sum += float(metric_fn(model, batch)) * n
            total += n
    return loss_sum, metric_sum, total


def means(
    loss_sum: float, metric_sum: float, total: float, has_metric: bool
) -> tuple[float, float | None]:
    """(mean loss, mean metric) from their sums over `total` examples."""
    if total == 0:
        raise ValueError("the validation data is empty")
    return loss_sum / total, (metric_sum / total if has_metric else None)
