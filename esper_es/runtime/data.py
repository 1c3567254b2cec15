"""Built-in datasets that need no download, their fingerprints, and deterministic batches.

* **digits**: scikit-learn's `load_digits` (1 797 real 8x8 handwritten digits, shipped inside
  the scikit-learn package) as float32 `(N, 1, 8, 8)` in [0, 1] (pixel / 16) with int64
  labels; split 80/20 per class (stratified) by a generator seeded from the master seed, so
  every class keeps its share in both parts and the split is a function of the seed alone.
* **pydoc text**: a character-level language-modelling task over the docstrings of Python's
  built-in functions and types (the `builtins` module and the methods of its types). They are
  compiled into the interpreter binary itself, so they exist in every CPython install, in
  every venv (which runs the base interpreter), with `-S` and even under `-OO` (which strips
  only docstrings compiled from `.py` files); no stdlib source file, LICENSE file or network is
  needed. The text is fixed for a given CPython version and may change between versions,
  which is fine: the environment records the Python version and `RunStarted` the fingerprint.

Fingerprints use SPEC §7's per-tensor record (key, dtype, shape, contiguous little-endian
bytes) with the tensor's position (`0`, `1`, …) as its key, in the order given.
"""

from __future__ import annotations

import builtins
import functools
import gzip
import hashlib
import importlib.util
import inspect
import math
import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import numpy as np
import torch
from torch import Tensor

from esper_es.runtime.rng import data_order, generator

DIGITS_VAL_FRACTION = 0.2
TEXT_VAL_FRACTION = 0.1
TEXT_WINDOW = 64


def _tensor_bytes(t: Tensor) -> bytes:
    # Same bytes as esper_es.nn.fingerprint; kept here so runtime depends on nothing in nn,
    # which will itself draw kernel seeds from runtime.rng (no import cycle).
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if sys.byteorder != "little" and flat.element_size() > 1:
        flat = flat.view(torch.uint8).reshape(-1, flat.element_size()).flip(1).contiguous()
    return bytes(flat.view(torch.uint8).numpy().tobytes())


def dataset_fingerprint(*tensors: Tensor) -> str:
    """`sha256:` digest of the tensors, in order, each as a SPEC §7 record keyed by position."""
    h = hashlib.sha256()
    for i, t in enumerate(tensors):
        h.update(str(i).encode("utf-8"))
        h.update(b"\0")
        h.update(str(t.dtype).removeprefix("torch.").encode("utf-8"))
        h.update(b"\0")
        h.update(",".join(str(int(d)) for d in t.shape).encode("ascii"))
        h.update(b"\0")
        h.update(_tensor_bytes(t))
    return "sha256:" + h.hexdigest()


# --- digits -----------------------------------------------------------------------------


@attrs.frozen(eq=False)
class DigitsSplit:
    """The digits train / validation split for one master seed, with its fingerprint."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    fingerprint: str
    num_classes: int = 10


def _digits_file() -> Path | None:
    # scikit-learn ships the digits as one gzipped CSV (64 pixels then the label per row).
    # Read straight from the package, `import sklearn.datasets` (0.8-1.5 s of start-up, most
    # of scikit-learn) is not needed; `find_spec` locates the package without importing it.
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    path = _digits_file()
    if path is not None:
        with gzip.open(path, "rt", encoding="ascii") as fh:
            table = np.loadtxt(fh, delimiter=",")
        images = np.asarray(table[:, :-1].reshape(-1, 8, 8), dtype=np.float32)
        labels = np.asarray(table[:, -1], dtype=np.int64)
    else:  # a scikit-learn that keeps them elsewhere: its loader
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = np.asarray(bunch.images, dtype=np.float32)
        labels = np.asarray(bunch.target, dtype=np.int64)
    # Cached arrays are shared; read-only stops a caller's in-place edit leaking into the next.
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_digits_tensors() -> tuple[Tensor, Tensor]:
    """All 1 797 digits: float32 `(N, 1, 8, 8)` in [0, 1] and int64 labels 0-9 (fresh tensors)."""
    images, labels = _digits_arrays()
    x = torch.tensor(images / np.float32(16.0), dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(labels, dtype=torch.int64)
    return x, y


def stratified_split(
    y: Tensor, master_seed: int, val_fraction: float, tag: str = "split"
) -> tuple[Tensor, Tensor]:
    """Train and validation indices (each ascending), `val_fraction` of every class in validation.

    Per class, in ascending label order, a permutation from one generator seeded by
    (master seed, tag) picks `floor(n_class * val_fraction + 0.5)` members for validation.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    g = generator(master_seed, tag)
    train: list[Tensor] = []
    val: list[Tensor] = []
    for label in torch.unique(y).tolist():
        members = torch.nonzero(y == label).flatten()
        members = members[torch.randperm(len(members), generator=g)]
        n_val = math.floor(len(members) * val_fraction + 0.5)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(val)).values


def load_digits_split(master_seed: int, val_fraction: float = DIGITS_VAL_FRACTION) -> DigitsSplit:
    """The digits, split train / validation per class from the master seed (see module doc)."""
    x, y = load_digits_tensors()
    train, val = stratified_split(y, master_seed, val_fraction, tag="digits_split")
    parts = (x[train], y[train], x[val], y[val])
    return DigitsSplit(*parts, fingerprint=dataset_fingerprint(*parts))


# --- pydoc text -------------------------------------------------------------------------


def _is_c_member(value: object) -> bool:
    return (
        inspect.isroutine(value)
        or inspect.isdatadescriptor(value)
        or isinstance(value, types.MemberDescriptorType | types.GetSetDescriptorType)
    )


@functools.lru_cache(maxsize=1)
def builtin_docs_text() -> str:
    """The docstrings of `builtins` and of its types' members, in sorted name order.

    Only objects implemented in C (`__module__ == "builtins"`) count, so what `site`, pytest or
    a REPL add to the builtins namespace (`help`, `exit`, `_`) never enters the text.
    """
    parts: list[str] = []
    if builtins.__doc__:
        parts.append(builtins.__doc__)
    for name in sorted(dir(builtins)):
        obj = getattr(builtins, name)
        if not isinstance(obj, type | types.BuiltinFunctionType):
            continue
        if getattr(obj, "__module__", None) != "builtins" or not isinstance(obj.__doc__, str):
            continue
        parts.append(f"{name}\n{obj.__doc__}")
        if isinstance(obj, type):
            for member, value in sorted(vars(obj).items()):
                doc = getattr(value, "__doc__", None)
                if _is_c_member(value) and isinstance(doc, str) and doc:
                    parts.append(f"{name}.{member}\n{doc}")
    return "\n\n".join(parts) + "\n"


@attrs.frozen(eq=False)
class CharVocabulary:
    """The sorted distinct characters of a text; id = position."""

    chars: tuple[str, ...]
    _index: dict[str, int] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.chars)})

    @classmethod
    def from_text(cls, text: str) -> CharVocabulary:
        """The vocabulary of every character in `text`."""
        return cls(tuple(sorted(set(text))))

    @property
    def size(self) -> int:
        """Number of distinct characters."""
        return len(self.chars)

    def encode(self, text: str) -> Tensor:
        """Character ids of `text` (int64); a character outside the vocabulary raises KeyError."""
        try:
            return torch.tensor([self._index[c] for c in text], dtype=torch.int64)
        except KeyError as exc:
            raise KeyError(f"character {exc.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """The text of character ids."""
        values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return "".join(self.chars[int(i)] for i in values)


@attrs.frozen(eq=False)
class TextTask:
    """Next-character prediction: `(input, target)` windows shifted by one, split by position."""

    vocab: CharVocabulary
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    window: int
    fingerprint: str


def windows(ids: Tensor, window: int, stride: int) -> tuple[Tensor, Tensor]:
    """`(input, target)` of shape `(M, window)`: inputs at 0, stride, …; targets one later."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window}, {stride}")
    count = max(0, (len(ids) - window - 1) // stride + 1)
    starts = torch.arange(count, dtype=torch.int64) * stride
    offsets = torch.arange(window, dtype=torch.int64)
    index = starts[:, None] + offsets[None, :]
    return ids[index], ids[index + 1]


def load_text_task(
    window: int = TEXT_WINDOW,
    val_fraction: float = TEXT_VAL_FRACTION,
    stride: int | None = None,
    text: str | None = None,
) -> TextTask:
    """The character task over `text` (default `builtin_docs_text()`).

    The first `1 - val_fraction` of the characters train, the rest validate, so no window
    crosses the boundary; windows do not overlap unless `stride < window` (default `window`).
    The vocabulary covers the whole text. The fingerprint covers the text's UTF-8 bytes (which
    fix the vocabulary) and the four tensors.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    source = builtin_docs_text() if text is None else text
    vocab = CharVocabulary.from_text(source)
    ids = vocab.encode(source)
    cut = len(ids) - math.floor(len(ids) * val_fraction + 0.5)
    step = window if stride is None else stride
    x_train, y_train = windows(ids[:cut], window, step)
    x_val, y_val = windows(ids[cut:], window, step)
    if len(x_train) == 0 or len(x_val) == 0:
        raise ValueError(f"text of {len(ids)} characters is too short for window {window}")
    raw = torch.frombuffer(bytearray(source.encode("utf-8")), dtype=torch.uint8)
    fingerprint = dataset_fingerprint(raw, x_train, y_train, x_val, y_val)
    return TextTask(vocab, x_train, y_train, x_val, y_val, window, fingerprint)


# --- batches ----------------------------------------------------------------------------


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches an epoch of `n` examples has."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    master_seed: int,
    epoch: int,
    start: int = 0,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """The epoch's mini-batches in `data_order(master_seed, epoch, n)`, from batch `start` on.

    Batch `k` is the same whatever `start` is, so resuming at the data position recorded in a
    snapshot continues exactly where the run stopped; `start == num_batches(...)` yields none.
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} examples but y has {len(y)}")
    total = num_batches(n, batch_size, drop_last)
    if not 0 <= start <= total:
        raise ValueError(f"start must be in [0, {total}], got {start}")
    order = data_order(master_seed, epoch, n)
    for k in range(start, total):
        index = order[k * batch_size : (k + 1) * batch_size]
        yield x[index], y[index]
