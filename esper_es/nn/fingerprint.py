"""Fingerprints (SPEC §7) of a model and an optimizer, and the architecture manifest.

Model: `sha256:` + hex SHA-256 over the `state_dict()` entries in sorted key order, each
contributing key (UTF-8), `\\0`, dtype name (`float32`), `\\0`, shape as comma-separated ints,
`\\0`, the tensor's contiguous CPU little-endian bytes.

Optimizer (same record format, over `optimizer.state_dict()`):
1. one record with key `param_groups`, dtype `json`, empty shape, whose bytes are the
   canonical JSON of the param groups (hyperparameters and the positional param ids; tensor
   hyperparameters become numbers);
2. then each state tensor as a record keyed `state/<param id>/<name>` in (param id, name)
   order; a non-tensor state value is a `json` record of its canonical JSON.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from esper_es.core.canonical import canonical_bytes
from esper_es.nn.placement import find_seed_layers

#: `dtype_name` of each dtype met so far: a checkpoint names ~80 tensors' dtypes twice (B2).
_DTYPE_NAMES: dict[torch.dtype, str] = {}


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.float32` -> `float32`."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype).removeprefix("torch.")
    return name


#: dtypes numpy holds natively: a CPU tensor of one of these is read through `.numpy()`.
_NUMPY_DTYPES = frozenset(
    {
        torch.float16, torch.float32, torch.float64, torch.complex64, torch.complex128,
        torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool,
    }
)  # fmt: skip
_LITTLE = sys.byteorder == "little"


def tensor_bytes(t: Tensor) -> bytes:
    """The tensor's contiguous CPU bytes, little-endian."""
    if _LITTLE and t.is_cpu and t.dtype in _NUMPY_DTYPES:
        # The same bytes as below in ~1 µs instead of ~4 (a checkpoint reads ~80 tensors, B2):
        # `tobytes` copies a strided view in C order, as `contiguous()` would. A tensor numpy
        # cannot view (one that requires grad, a conjugate or negative bit) takes the general
        # path; state dicts, optimizer state and gradients never require grad.
        try:
            return t.numpy().tobytes()
        except (RuntimeError, TypeError):
            pass
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if sys.byteorder != "little" and flat.element_size() > 1:
        # Reverse each element's bytes; the spec fixes little-endian whatever the machine.
        raw = flat.view(torch.uint8).reshape(-1, flat.element_size()).flip(1)
        return bytes(raw.contiguous().numpy().tobytes())
    return bytes(flat.view(torch.uint8).numpy().tobytes())


#: How a caller reads a tensor's bytes (`tensor_bytes`, or a `TensorBytes` memo of it).
BytesOf = Callable[[Tensor], bytes]


class TensorBytes:
    """`tensor_bytes` remembered per tensor object, for work that reads a tensor twice.

    A checkpoint reads the optimizer's state for its fingerprint and for the snapshot, and
    the model's for both too: with one memo for the whole checkpoint each is read once. Only
    valid while the tensors do not change (one checkpoint); it keeps them alive, so an id is
    never reused within it.
    """

    def __init__(self) -> None:
        self._seen: dict[int, tuple[Tensor, bytes]] = {}

    def __call__(self, t: Tensor) -> bytes:
        hit = self._seen.get(id(t))
        if hit is not None:
            return hit[1]
        data = tensor_bytes(t)
        self._seen[id(t)] = (t, data)
        return data


#: Each record header met so far, by (key, dtype name, shape): a checkpoint hashes the same
#: ~80 headers every time (B2). Bounded by the distinct tensors a process fingerprints.
_HEADERS: dict[tuple[str, str, tuple[int, ...]], bytes] = {}


def _update(h: Any, key: str, dtype: str, shape: Iterable[int], data: bytes) -> None:
    # One update for the record's header (the same bytes hashed as four separate ones).
    shape = tuple(shape)
    header = _HEADERS.get((key, dtype, shape))
    if header is None:
        header = f"{key}\0{dtype}\0{','.join(map(str, map(int, shape)))}\0".encode()
        if len(_HEADERS) < 100_000:
            _HEADERS[(key, dtype, shape)] = header
    h.update(header)
    h.update(data)


def _update_tensor(h: Any, key: str, t: Tensor, data: BytesOf = tensor_bytes) -> None:
    _update(h, key, dtype_name(t.dtype), t.shape, data(t))


def state_dict_fingerprint(state: Mapping[str, Any]) -> str:
    """Fingerprint of a state dict (SPEC §7); every value must be a tensor."""
    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        if not isinstance(value, Tensor):
            raise TypeError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
        _update_tensor(h, key, value)
    return "sha256:" + h.hexdigest()


def fingerprint_with_digests(
    state: Mapping[str, Tensor], data: BytesOf = tensor_bytes
) -> tuple[str, dict[str, str]]:
    """The state dict's fingerprint and each entry's own, reading every tensor's bytes once.

    A checkpoint records both (the per-entry digests let a diverging replay name the tensors
    that differ); computing them in one pass halves the checkpoint's hashing (B2).
    """
    whole = hashlib.sha256()
    each: dict[str, str] = {}
    for key in sorted(state):
        t = state[key]
        if not isinstance(t, Tensor):
            raise TypeError(f"state_dict entry {key!r} is a {type(t).__name__}, not a tensor")
        raw, dtype = data(t), dtype_name(t.dtype)
        one = hashlib.sha256()
        _update(one, key, dtype, t.shape, raw)
        _update(whole, key, dtype, t.shape, raw)
        each[key] = "sha256:" + one.hexdigest()
    return "sha256:" + whole.hexdigest(), each


def model_fingerprint(model: nn.Module) -> str:
    """Fingerprint of `model.state_dict()` (SPEC §7)."""
    return state_dict_fingerprint(model.state_dict())


_SCALARS = frozenset({type(None), bool, int, float, str})


def _jsonable(value: Any) -> Any:
    if type(value) in _SCALARS:  # exact types first: most of a param group (ABC checks are slow)
        return value
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def optimizer_fingerprint(
    optimizer: torch.optim.Optimizer,
    data: BytesOf = tensor_bytes,
    state_dict: Mapping[str, Any] | None = None,
) -> str:
    """Fingerprint of an optimizer's hyperparameters and state (scheme in the module doc).

    `state_dict`: `optimizer.state_dict()` when the caller already took it.
    """
    sd = optimizer.state_dict() if state_dict is None else state_dict
    h = hashlib.sha256()
    _update(h, "param_groups", "json", (), canonical_bytes(_jsonable(sd["param_groups"])))
    state: Mapping[Any, Mapping[str, Any]] = sd["state"]
    for pid in sorted(state, key=lambda p: (str(type(p)), p)):
        for name in sorted(state[pid]):
            value = state[pid][name]
            key = f"state/{pid}/{name}"
            if isinstance(value, Tensor):
                _update_tensor(h, key, value, data)
            else:
                _update(h, key, "json", (), canonical_bytes(_jsonable(value)))
    return "sha256:" + h.hexdigest()


def architecture_manifest(model: nn.Module) -> dict[str, Any]:
    """Per seed layer its shape and seeds (stage, kernel, alpha, target), plus the fingerprint."""
    layers = {
        name: {
            "shape_kind": layer.shape_kind,
            "channels": layer.channels,
            "num_seeds": layer.num_seeds,
            "blueprints": list(layer.blueprints),
            "seeds": layer.summary(),
        }
        for name, layer in sorted(find_seed_layers(model).items())
    }
    return {
        "fingerprint": model_fingerprint(model),
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": layers,
    }
