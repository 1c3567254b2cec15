"""A snapshot's state blob is written as text directly (`snapshots._Writer`, B2): the bytes
must be exactly the canonical JSON of the mirror `read_snapshot` parses, for any state."""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Mapping
from enum import IntEnum
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from esper_es.core.canonical import canonical_bytes
from esper_es.nn.fingerprint import dtype_name
from esper_es.trainer.snapshots import _rng_key, _Writer


class Kind(IntEnum):
    A = 3


def mirror(w: _Writer, value: Any) -> Any:
    """The mirror as a JSON value (the reference: what `_restore` reads)."""
    if isinstance(value, Tensor):
        return {"tensor": reference(w, value)}
    if isinstance(value, Mapping):
        return {"map": [[mirror(w, k), mirror(w, v)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return {"list": [mirror(w, v) for v in value]}
    return {"value": value}


def reference(w: _Writer, t: Tensor) -> dict[str, Any]:
    return {"blob": w.blob(w.data(t)), "dtype": dtype_name(t.dtype), "shape": list(t.shape)}


tensors = st.builds(
    lambda shape, dtype, fill: torch.full(shape, fill, dtype=dtype),
    st.lists(st.integers(0, 3), max_size=3).map(tuple),
    st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool]),
    st.integers(0, 1),
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.just(Kind.A)
)
keys = st.integers(-5, 5) | st.text(max_size=6)
values = st.recursive(
    scalars | tensors,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(keys, inner, max_size=4)
        | st.dictionaries(keys, inner, max_size=3).map(OrderedDict)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_value_json_is_the_canonical_json_of_the_mirror(value: Any) -> None:
    direct, ref = _Writer(None), _Writer(None)
    assert direct.value_json(value).encode("utf-8") == canonical_bytes(mirror(ref, value))
    assert direct.total_bytes == ref.total_bytes


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=6), tensors, max_size=5))
def test_tensors_json_is_the_canonical_json_of_the_references(named: dict[str, Tensor]) -> None:
    direct, ref = _Writer(None), _Writer(None)
    text = direct.tensors_json(named)
    assert text.encode("utf-8") == canonical_bytes({k: reference(ref, t) for k, t in named.items()})
    assert direct.tensors == len(named)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_number_is_refused_as_canonical_json_refuses_it(bad: float) -> None:
    with pytest.raises(ValueError):
        canonical_bytes({"value": bad})
    with pytest.raises(ValueError):
        _Writer(None).value_json({"lr": bad})


def test_an_unknown_value_is_refused() -> None:
    with pytest.raises(TypeError):
        _Writer(None).value_json({"x": object()})


def test_the_rng_blob_key_is_its_sha256_whether_kept_or_not() -> None:
    first, second = b"rng state" * 100, b"another state" * 100
    for data in (first, first, second, first):
        assert _rng_key(data) == hashlib.sha256(data).hexdigest()
