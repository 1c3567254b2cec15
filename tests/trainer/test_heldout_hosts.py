"""Hosts written apart from the built-in ones grow early under the default controller.

Three hosts of common shapes, none of them known to the framework (a residual CNN with
BatchNorm, an MLP with Dropout, a pre-norm transformer block over characters), each trained
for 8 epochs with the default run config: the controller must germinate a seed within the
first third of the run (issue 11).
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper_es.config import RunConfig
from esper_es.runtime.data import load_digits_split, load_text_task
from esper_es.store.database import RunDatabase
from esper_es.trainer import train

EPOCHS = 8


class ResidualBNCNN(nn.Module):
    """conv-BN-ReLU stem, two residual conv-BN blocks, global average pooling, linear head."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.block1 = self._block(width)
        self.block2 = self._block(width)
        self.head = nn.Linear(width, 10)

    @staticmethod
    def _block(width: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        h = h + self.block1(h)
        h = h + self.block2(h)
        out: Tensor = self.head(h.mean(dim=(2, 3)))
        return out


class DropoutMLP(nn.Module):
    """Two hidden layers with ReLU and Dropout over the 64 pixels."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.fc1 = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(0.2))
        self.fc2 = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.2))
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.fc2(self.fc1(x.flatten(1))))
        return out


class TinyCharTransformer(nn.Module):
    """Embedding + positions, one pre-norm transformer block, a linear read-out per position."""

    def __init__(self, vocab: int, d: int = 32, window: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(1, window, d))
        self.block = nn.TransformerEncoderLayer(
            d, 2, dim_feedforward=2 * d, dropout=0.0, batch_first=True, norm_first=True
        )
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(window))

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x) + self.pos[:, : x.shape[1]]
        h = self.block(h, src_mask=self.mask[: x.shape[1], : x.shape[1]], is_causal=True)
        out: Tensor = self.out(self.norm(h))
        return out


def ce(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def digits() -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    s = load_digits_split(0)
    return (s.x_train, s.y_train), (s.x_val, s.y_val)


def text() -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], int]:
    t = load_text_task(window=32)
    return (t.x_train[:1024], t.y_train[:1024]), (t.x_val[:256], t.y_val[:256]), t.vocab.size


def first_germination(db: Path) -> int | None:
    with RunDatabase.open(db, readonly=True) as d:
        steps = [r.event.step for r in d.read(types=["SeedGerminated"])]
    return min(steps) if steps else None


CASES = {
    "residual_bn_cnn": (lambda _v: ResidualBNCNN(), {"block1": 1, "block2": 1}, "digits"),
    "dropout_mlp": (lambda _v: DropoutMLP(), {"fc1": 1, "fc2": 1}, "digits"),
    "transformer_block": (lambda v: TinyCharTransformer(v), {"block": 2}, "text"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_heldout_host_germinates_within_the_first_third(name: str, tmp_path: Path) -> None:
    make, layers, data = CASES[name]
    if data == "digits":
        (train_data, val_data), vocab = digits(), 0
        example: Tensor = train_data[0][:2]
    else:
        train_data, val_data, vocab = text()
        example = train_data[0][:2]
    config = RunConfig()
    config = attrs.evolve(config, train=attrs.evolve(config.train, epochs=EPOCHS))
    torch.manual_seed(0)
    db = tmp_path / f"{name}.db"
    result = train(
        make(vocab),
        db_path=db,
        train_data=train_data,
        val_data=val_data,
        loss_fn=ce,
        example_input=example,
        seed_layers=layers,
        config=config,
        seed=0,
    )
    total = result.steps
    first = first_germination(db)
    assert first is not None, f"{name}: nothing germinated in {EPOCHS} epochs"
    assert first <= total / 3, f"{name}: first germination at step {first} of {total}"
