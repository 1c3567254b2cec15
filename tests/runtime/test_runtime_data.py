"""Built-in datasets, fingerprints and deterministic, resumable batches."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from esper_es.nn.fingerprint import state_dict_fingerprint
from esper_es.runtime.data import (
    CharVocabulary,
    batches,
    builtin_docs_text,
    dataset_fingerprint,
    load_digits_split,
    load_digits_tensors,
    load_text_task,
    num_batches,
    windows,
)


def test_digits_shapes_and_range() -> None:
    x, y = load_digits_tensors()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert sorted(torch.unique(y).tolist()) == list(range(10))


def test_digits_split_is_stratified_disjoint_and_deterministic() -> None:
    s = load_digits_split(0)
    assert s.num_classes == 10
    assert len(s.x_train) + len(s.x_val) == 1797
    assert len(s.x_train) == len(s.y_train) and len(s.x_val) == len(s.y_val)
    full_counts = torch.bincount(load_digits_tensors()[1], minlength=10)
    val_counts = torch.bincount(s.y_val, minlength=10)
    for c in range(10):
        assert abs(int(val_counts[c]) - 0.2 * int(full_counts[c])) <= 0.5
    again = load_digits_split(0)
    assert torch.equal(s.x_train, again.x_train) and torch.equal(s.y_val, again.y_val)
    assert s.fingerprint == again.fingerprint
    other = load_digits_split(1)
    assert other.fingerprint != s.fingerprint
    assert not torch.equal(other.y_val, s.y_val)


def test_split_indices_are_disjoint_and_cover() -> None:
    from esper_es.runtime.data import stratified_split

    _, y = load_digits_tensors()
    train, val = stratified_split(y, 0, 0.2, tag="digits_split")
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(1797))


def test_fingerprint_format_and_sensitivity() -> None:
    x, y = load_digits_tensors()
    fp = dataset_fingerprint(x, y)
    assert fp.startswith("sha256:") and len(fp) == 71
    assert dataset_fingerprint(x, y) == fp
    x2 = x.clone()
    x2[100, 0, 3, 4] += 1.0 / 16.0
    assert dataset_fingerprint(x2, y) != fp
    assert dataset_fingerprint(y, x) != fp  # order matters
    assert dataset_fingerprint(x.double(), y) != fp  # dtype matters
    assert dataset_fingerprint(x.reshape(1797, 64), y) != fp  # shape matters
    # The SPEC §7 record: one tensor keyed "0" fingerprints like a one-entry state dict.
    assert dataset_fingerprint(y) == state_dict_fingerprint({"0": y})
    # In-place edits of returned tensors never reach the next load.
    x.zero_()
    assert dataset_fingerprint(*load_digits_tensors()) == fp


def test_pydoc_text_needs_no_files_or_site() -> None:
    text = builtin_docs_text()
    assert len(text) > 50_000
    assert "Return the number of items in a container." in text
    # Same text in a fresh interpreter without site and with docstrings stripped (-OO).
    code = (
        "import hashlib; from esper_es.runtime.data import builtin_docs_text as t;"
        "print(hashlib.sha256(t().encode()).hexdigest())"
    )
    import hashlib
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run(
        [sys.executable, "-OO", "-S", "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == hashlib.sha256(text.encode()).hexdigest()


def test_vocabulary_round_trip() -> None:
    task = load_text_task()
    vocab = task.vocab
    sample = builtin_docs_text()[:2000]
    assert vocab.decode(vocab.encode(sample)) == sample
    assert vocab.decode(vocab.encode(sample).tolist()) == sample
    assert list(vocab.chars) == sorted(set(builtin_docs_text()))
    with pytest.raises(KeyError):
        CharVocabulary.from_text("abc").encode("abd")


def test_text_windows_and_split() -> None:
    task = load_text_task(window=32)
    assert task.x_train.shape[1] == 32 and task.y_train.shape == task.x_train.shape
    assert task.x_val.shape[1] == 32 and task.y_val.shape == task.x_val.shape
    assert task.x_train.dtype == torch.int64
    # Targets are the inputs shifted by one character.
    assert torch.equal(task.x_train[:, 1:], task.y_train[:, :-1])
    # With stride == window, one window's last target is the next window's first input.
    assert torch.equal(task.x_train[1:, 0], task.y_train[:-1, -1])
    text = builtin_docs_text()
    assert task.vocab.decode(task.x_train[0]) == text[:32]
    assert task.vocab.decode(task.y_train[0]) == text[1:33]
    n = len(text)
    assert abs(len(task.x_val) * 32 - 0.1 * n) < 2 * 32 + 2
    assert load_text_task(window=32).fingerprint == task.fingerprint
    assert load_text_task(window=16).fingerprint != task.fingerprint
    assert load_text_task(text="x" * 200 + "y", window=8).fingerprint != task.fingerprint


def test_windows_overlap_with_stride() -> None:
    x, y = windows(torch.arange(10), window=4, stride=2)
    assert x.tolist() == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]]
    assert y.tolist() == [[1, 2, 3, 4], [3, 4, 5, 6], [5, 6, 7, 8]]


def test_batches_cover_the_epoch_in_data_order() -> None:
    x = torch.arange(103).float().unsqueeze(1)
    y = torch.arange(103)
    full = list(batches(x, y, 10, master_seed=4, epoch=2))
    assert len(full) == num_batches(103, 10) == 11
    assert [len(b[1]) for b in full] == [10] * 10 + [3]
    seen = torch.cat([b[1] for b in full])
    assert sorted(seen.tolist()) == list(range(103))
    assert torch.equal(torch.cat([b[0] for b in full]).squeeze(1).long(), seen)
    other = torch.cat([b[1] for b in batches(x, y, 10, master_seed=4, epoch=3)])
    assert not torch.equal(seen, other)
    assert len(list(batches(x, y, 10, 4, 2, drop_last=True))) == 10


@pytest.mark.parametrize("k", [0, 1, 5, 10, 11])
def test_batches_resume_at_start_equals_the_tail(k: int) -> None:
    x = torch.randn(103, 3, generator=torch.Generator().manual_seed(0))
    y = torch.arange(103)
    full = list(batches(x, y, 10, 9, 0))
    tail = list(batches(x, y, 10, 9, 0, start=k))
    assert len(tail) == len(full) - k
    for (xa, ya), (xb, yb) in zip(full[k:], tail, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_batches_reject_bad_arguments() -> None:
    x, y = torch.zeros(5, 2), torch.zeros(5)
    with pytest.raises(ValueError):
        list(batches(x, y[:4], 2, 0, 0))
    with pytest.raises(ValueError):
        list(batches(x, y, 2, 0, 0, start=4))
    with pytest.raises(ValueError):
        list(batches(x, y, 0, 0, 0))


def test_digits_read_from_the_package_file_equal_scikit_learns_loader() -> None:
    import subprocess
    import sys

    import numpy as np
    from sklearn.datasets import load_digits

    from esper_es.runtime.data import _digits_arrays

    images, labels = _digits_arrays()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images.astype(np.float32))
    assert np.array_equal(labels, bunch.target)
    # ...without importing scikit-learn's datasets module (start-up time, issue 12).
    code = (
        "import sys; from esper_es.runtime.data import load_digits_tensors\n"
        "load_digits_tensors(); print('sklearn.datasets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
