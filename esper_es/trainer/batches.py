"""The run's data as the trainer walks it: steps per epoch, each epoch's batches, validation.

Data is `(x, y)` tensors (batched here in the run's data order, a function of the master seed
and the epoch), a function of the epoch giving that epoch's batches, or a re-iterable of
batches; see `esper_es.trainer.loop.TrainData`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from esper_es.runtime.data import batches as tensor_batches
from esper_es.runtime.data import num_batches
from esper_es.runtime.device import to_device

Batch = Any


def _tensors(data: Any) -> bool:
    return isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor)


def on_device(data: Any, device: torch.device) -> Any:
    """`(x, y)` tensor data moved to `device` once; other data as is (see `placed`)."""
    return to_device(data, device) if _tensors(data) else data


def placed(batches: Iterable[Batch], device: torch.device) -> Iterator[Batch]:
    """`batches`, each on `device` as it is taken (a no-op for tensors already there)."""
    return (to_device(b, device) for b in batches)


def steps_per_epoch(train_data: Any, batch_size: int) -> int:
    """Optimizer steps per epoch (0 if the data is not sized)."""
    if _tensors(train_data):
        return num_batches(len(train_data[0]), batch_size)
    return len(train_data) if isinstance(train_data, Sequence) else 0


def epoch_batches(
    train_data: Any, batch_size: int, master_seed: int, epoch: int
) -> Iterator[Batch]:
    """Epoch `epoch`'s training batches, in the run's data order."""
    if _tensors(train_data):
        x, y = train_data
        yield from tensor_batches(x, y, batch_size, master_seed, epoch)
    elif callable(train_data):
        yield from train_data(epoch)
    else:
        yield from train_data


def val_batches(val_data: Any, batch_size: int) -> Iterator[Batch]:
    """The validation batches, in order."""
    if _tensors(val_data):
        x, y = val_data
        for i in range(0, len(x), batch_size):
            yield (x[i : i + batch_size], y[i : i + batch_size])
    else:
        yield from val_data


def batch_len(batch: Batch) -> int:
    """Examples in `batch` (the length of its first element)."""
    first = batch[0] if isinstance(batch, tuple | list) else batch
    return len(first)
