"""How the trainer walks an epoch's batches (`trainer.batches.epoch_walk`)."""

from __future__ import annotations

import torch

from esper_es.runtime.data import EpochBatches, batches
from esper_es.trainer.batches import epoch_walk

CPU = torch.device("cpu")


def test_tensor_data_is_gathered_per_batch_and_equals_the_epochs_batches() -> None:
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(3))
    y = torch.arange(50)
    walk = epoch_walk((x, y), 8, 5, 2, CPU)
    assert isinstance(walk, EpochBatches)  # nothing gathered before the steps take it
    expected = list(batches(x, y, 8, 5, 2))
    assert len(walk) == len(expected) == 7
    for k, (xe, ye) in enumerate(expected):
        xb, yb = walk[k]
        assert torch.equal(xb, xe) and torch.equal(yb, ye)


def test_other_data_is_taken_whole_in_its_order() -> None:
    data = [(torch.full((2,), float(i)), torch.tensor([i])) for i in range(4)]
    walk = epoch_walk(lambda epoch: data[epoch:], 2, 0, 1, CPU)
    assert len(walk) == 3
    assert [int(walk[k][1]) for k in range(3)] == [1, 2, 3]
