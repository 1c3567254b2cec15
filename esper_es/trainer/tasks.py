"""The built-in tasks: a host, its data, its loss and its metric, all from the run config.

- `digits`: `DigitsCNN` (width `host.width`) on scikit-learn's digits, split per class from the
  master seed; cross-entropy loss; accuracy.
- `text`: `CharTransformer` on `runtime.load_text_task` (next-character prediction over the
  docstrings compiled into CPython); cross-entropy over every position; per-character accuracy.

Host weights come from a seed derived from the master seed (`derive_seed(seed, "host")`), never
from the caller's global RNG stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper_es.config import RunConfig
from esper_es.core.ids import derive_seed
from esper_es.nn.hosts import CharTransformer, DigitsCNN
from esper_es.runtime.data import dataset_fingerprint, load_digits_split, load_text_task

Batch = tuple[Tensor, Tensor]


@attrs.frozen(eq=False)
class Task:
    """A host with its data: what the trainer needs to run a built-in (or wrapped) task."""

    name: str
    host: nn.Module
    example_input: Any
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    fingerprint: str
    loss_fn: Callable[[nn.Module, Batch], Tensor]
    metric_fn: Callable[[nn.Module, Batch], float]
    loss_and_metric: Callable[[nn.Module, Batch], tuple[Tensor, float]]


def classification_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Cross-entropy of the model's logits; sequence logits (B, T, V) are flattened."""
    return cross_entropy_of(model(batch[0]), batch)


def cross_entropy_of(logits: Tensor, batch: Batch) -> Tensor:
    """`classification_loss` of `logits` already computed for `batch`."""
    y = batch[1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def output_loss(loss_fn: Callable[..., Any]) -> Callable[[Tensor, Batch], Tensor] | None:
    """`loss_fn` as a function of the model's output, if it is a built-in loss (else None)."""
    return cross_entropy_of if loss_fn is classification_loss else None


def accuracy(model: nn.Module, batch: Batch) -> float:
    """Share of positions whose arg-max logit is the label."""
    x, y = batch
    return _accuracy(model(x), y)


def _accuracy(logits: Tensor, y: Tensor) -> float:
    pred = logits.argmax(dim=-1)
    return float((pred == y).to(torch.float64).mean())


def classification_loss_and_accuracy(model: nn.Module, batch: Batch) -> tuple[Tensor, float]:
    """`classification_loss` and `accuracy` from one forward pass (the same bits as two)."""
    x, y = batch
    logits = model(x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return loss, _accuracy(logits, y)


def _head(x: Tensor, y: Tensor, n: int) -> tuple[Tensor, Tensor]:
    return (x[:n], y[:n]) if n > 0 else (x, y)


def build_task(config: RunConfig, master_seed: int) -> Task:
    """The task `config.host.task` names, with its host initialised from `master_seed`."""
    h = config.host
    host_seed = derive_seed(master_seed, "host")
    if h.task == "digits":
        split = load_digits_split(master_seed)
        x_train, y_train, x_val, y_val = (split.x_train, split.y_train, split.x_val, split.y_val)
        host: nn.Module = DigitsCNN(width=h.width, seed=host_seed)
        example: Any = torch.zeros(2, 1, 8, 8)
    else:
        text = load_text_task(window=h.window)
        x_train, y_train, x_val, y_val = (text.x_train, text.y_train, text.x_val, text.y_val)
        host = CharTransformer(
            vocab_size=text.vocab.size,
            d_model=h.d_model,
            n_heads=h.n_heads,
            n_blocks=h.n_blocks,
            max_len=h.window,
            seed=host_seed,
        )
        example = torch.zeros(2, h.window, dtype=torch.long)
    x_train, y_train = _head(x_train, y_train, h.max_train_examples)
    x_val, y_val = _head(x_val, y_val, h.max_val_examples)
    fingerprint = dataset_fingerprint(x_train, y_train, x_val, y_val)
    return Task(
        h.task,
        host,
        example,
        x_train,
        y_train,
        x_val,
        y_val,
        fingerprint,
        classification_loss,
        accuracy,
        classification_loss_and_accuracy,
    )
