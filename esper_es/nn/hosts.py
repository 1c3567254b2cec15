"""Example hosts the project, its tests and its benchmarks share.

- `DigitsCNN`: 8x8 single-channel digits (scikit-learn `load_digits`), seed points `layer1`,
  `layer2`; `width=32` gives the static 8x wider host of B9.
- `VectorMLP`: an MLP on flat vectors, seed points `layer1`, `layer2`.
- `CharTransformer`: a causal character-level language model, blocks `blocks.0`, `blocks.1`,
  each with `attn` and `mlp`.

All use only ops that are deterministic on CPU. Passing `seed` initialises the host from that
seed without touching the caller's global RNG stream. None has a module that computes
differently in training and evaluation mode, so each can resume its forward at a module whose
output is all the rest reads (`nn.resumable`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from esper_es.nn.resumable import chain_after


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class DigitsCNN(nn.Module):
    """Conv 1→width (`stem`), `layer1`, `layer2` (width→width), 2x2 `pool`, `flatten`, `head`."""

    def __init__(self, width: int = 4, num_classes: int = 10, seed: int | None = None) -> None:
        super().__init__()
        self.width = width
        with _seeded(seed):
            self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())
            self.layer1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
            self.layer2 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
            self.pool = nn.MaxPool2d(2)
            # A module of its own (no parameters), so a vector seed layer can be placed on the
            # features the head reads (`[seeds.layers] flatten = N`) without graph surgery.
            self.flatten = nn.Flatten()
            self.head = nn.Linear(width * 16, num_classes)

    #: The modules `forward` calls, in order, each on the previous one's output.
    CHAIN = ("stem", "layer1", "layer2", "pool", "flatten", "head")

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of (B, 1, 8, 8) images."""
        h = self.layer2(self.layer1(self.stem(x)))
        out: Tensor = self.head(self.flatten(self.pool(h)))
        return out

    def resumes_at(self, point: str) -> bool:
        """Whether `forward_after` can start at `point` (any module of `CHAIN`)."""
        return point in self.CHAIN

    def forward_after(self, point: str, output: Tensor) -> Tensor:
        """The logits `forward` returns when the module at `point` (in `CHAIN`) gave `output`."""
        return chain_after(self, self.CHAIN, point, output)

    def example_input(self, batch: int = 2) -> Tensor:
        """A zero batch of the host's input shape, for placement's dry run."""
        return torch.zeros(batch, 1, 8, 8)


class VectorMLP(nn.Module):
    """`layer1` (Linear+ReLU), `layer2` (Linear+ReLU), `head` (Linear)."""

    def __init__(
        self,
        in_features: int = 64,
        hidden: int = 32,
        num_classes: int = 10,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        with _seeded(seed):
            self.layer1 = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
            self.layer2 = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())
            self.head = nn.Linear(hidden, num_classes)

    #: The modules `forward` calls, in order, each on the previous one's output.
    CHAIN = ("layer1", "layer2", "head")

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of (B, in_features) vectors."""
        out: Tensor = self.head(self.layer2(self.layer1(x)))
        return out

    def resumes_at(self, point: str) -> bool:
        """Whether `forward_after` can start at `point` (any module of `CHAIN`)."""
        return point in self.CHAIN

    def forward_after(self, point: str, output: Tensor) -> Tensor:
        """The logits `forward` returns when the module at `point` (in `CHAIN`) gave `output`."""
        return chain_after(self, self.CHAIN, point, output)

    def example_input(self, batch: int = 2) -> Tensor:
        """A zero batch of the host's input shape."""
        return torch.zeros(batch, self.in_features)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, written out so it is deterministic on CPU."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """Attend over earlier positions only."""
        b, t, c = x.shape
        hd = c // self.n_heads
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, hd).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        y = scores.masked_fill(mask, float("-inf")).softmax(dim=-1) @ v
        out: Tensor = self.proj(y.transpose(1, 2).reshape(b, t, c))
        return out


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )

    def forward(self, x: Tensor) -> Tensor:
        """One block on a (B, T, C) sequence."""
        x = x + self.attn(self.ln1(x))
        out: Tensor = x + self.mlp(self.ln2(x))
        return out


class CharTransformer(nn.Module):
    """Character-level causal LM: token + position embedding, `blocks.i`, final norm, head."""

    def __init__(
        self,
        vocab_size: int = 64,
        d_model: int = 32,
        n_heads: int = 2,
        n_blocks: int = 2,
        max_len: int = 64,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.max_len = max_len
        with _seeded(seed):
            self.tok = nn.Embedding(vocab_size, d_model)
            self.pos = nn.Embedding(max_len, d_model)
            self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_blocks))
            self.ln_f = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, vocab_size)

    def forward(self, idx: Tensor) -> Tensor:
        """Next-token logits (B, T, vocab) for token ids (B, T)."""
        t = idx.shape[1]
        if t > self.max_len:
            raise ValueError(f"sequence length {t} exceeds max_len {self.max_len}")
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        out: Tensor = self.head(self.ln_f(x))
        return out

    def _chain(self) -> tuple[str, ...]:
        # A block's output is the whole residual stream: what follows reads nothing else.
        return (*(f"blocks.{i}" for i in range(len(self.blocks))), "ln_f", "head")

    def resumes_at(self, point: str) -> bool:
        """Whether `forward_after` can start at `point`: `blocks.i`, `ln_f` or `head`."""
        return point in self._chain()

    def forward_after(self, point: str, output: Tensor) -> Tensor:
        """The logits `forward` returns when `blocks.i`, `ln_f` or `head` gave `output`."""
        return chain_after(self, self._chain(), point, output)

    def example_input(self, batch: int = 2, length: int = 8) -> Tensor:
        """A zero batch of token ids."""
        return torch.zeros(batch, min(length, self.max_len), dtype=torch.long)
