"""Content-addressed snapshots (SPEC §6): everything a resume or a `replay --to` needs.

A snapshot is a manifest blob (canonical JSON) holding the data position and the trainer's own
small state inline and naming a state blob, which names one blob per tensor of the model's
`state_dict` and of the optimizer's state and one for the RNG state (`encode_rng_state`).
Blob keys are SHA-256 of the content, and a tensor's blob is its raw little-endian bytes (its
dtype and shape live in the manifest), so a tensor that did not change since the last snapshot
costs nothing the second time: B8's "second snapshot of unchanged weights adds <= 1 % bytes".
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import Tensor

from esper_es.core.canonical import canonical_bytes, encode_string
from esper_es.errors import TamperDetected
from esper_es.nn.fingerprint import BytesOf, dtype_name, tensor_bytes
from esper_es.store.protocol import RunStore

SNAPSHOT_FORMAT = 1

#: State already taken for a snapshot: the model's `state_dict`, the optimizer's, and how to
#: read a tensor's bytes (`write_snapshot`'s `taken`).
Taken = tuple[Mapping[str, Tensor], Mapping[str, Any], BytesOf]


@attrs.frozen
class SnapshotStats:
    """What writing one snapshot cost: blobs referenced, newly stored, and their bytes."""

    key: str
    tensors: int
    new_blobs: int
    new_bytes: int
    total_bytes: int


_SCALARS = frozenset({type(None), bool, int, float, str})
_SEQUENCES = frozenset({list, tuple})


class _Writer:
    def __init__(self, db: RunStore | None, data: BytesOf = tensor_bytes) -> None:
        self.db = db  # None: only compute the keys (nothing is stored)
        self.data = data
        self.tensors = 0
        self.new_blobs = 0
        self.new_bytes = 0
        self.total_bytes = 0
        #: Every blob this snapshot names, by key; `flush` stores those not stored yet.
        self.named: dict[str, bytes] = {}

    def blob(self, data: bytes, key: str | None = None) -> str:
        """Name `data` (by `key`, its SHA-256, when known) as one of this snapshot's blobs."""
        if key is None:
            key = hashlib.sha256(data).hexdigest()
        self.total_bytes += len(data)
        if self.db is not None:
            self.named.setdefault(key, data)
        return key

    def flush(self) -> None:
        if self.db is not None and self.named:
            # Unchanged tensors are already stored: one query for all of them (not one per
            # tensor), and the new ones are written together, in the transaction of the
            # commit that names them (`RunDatabase.stage_blobs`): one fsync per snapshot (B2).
            stored = self.db.stored_blobs(list(self.named))
            new = {key: data for key, data in self.named.items() if key not in stored}
            self.new_blobs = len(new)
            self.new_bytes = sum(len(data) for data in new.values())
            self.db.stage_blobs(list(new.values()), list(new))
        self.named.clear()

    def tensor_json(self, t: Tensor) -> str:
        """Canonical JSON of `t`'s reference: its blob (registered), dtype and shape."""
        self.tensors += 1
        shape = _SHAPES.get(t.shape)
        if shape is None:
            shape = ",".join([str(int(n)) for n in t.shape])
            if len(_SHAPES) < 10_000:
                _SHAPES[t.shape] = shape
        return (
            f'{{"blob":"{self.blob(self.data(t))}",'
            f'"dtype":{_dtype_json(t.dtype)},"shape":[{shape}]}}'
        )

    def tensors_json(self, tensors: Mapping[str, Tensor]) -> str:
        """Canonical JSON of `{name: tensor reference}`, tensors registered in name order."""
        parts = [f"{encode_string(k)}:{self.tensor_json(t)}" for k, t in sorted(tensors.items())]
        return "{" + ",".join(parts) + "}"

    def value_json(self, value: Any) -> str:
        """Canonical JSON of a mirror of `value` with every tensor replaced by a blob reference.

        The mirror (what `_restore` reads back): `{"value": scalar}`, `{"tensor": reference}`,
        `{"map": [[key, value], ...]}` for a mapping, `{"list": [...]}` for a list or tuple,
        keys and items mirrored in turn. Written as text directly, the bytes `canonical_bytes`
        gives for the mirror (a property test checks), without building the mirror first:
        an optimizer's state is ~250 small objects, and building then encoding them was
        ~0.1 ms of every snapshot (B2).
        """
        kind = type(value)
        if kind in _SCALARS:  # exact types first: most of an optimizer's state (B2)
            return f'{{"value":{_scalar_json(value)}}}'
        if isinstance(value, Tensor):
            return f'{{"tensor":{self.tensor_json(value)}}}'
        if kind is dict or (kind not in _SEQUENCES and isinstance(value, Mapping)):
            # dict first: ABC checks are slow
            pairs = [f"[{self.value_json(k)},{self.value_json(v)}]" for k, v in value.items()]
            return '{"map":[' + ",".join(pairs) + "]}"
        if isinstance(value, list | tuple):
            return '{"list":[' + ",".join([self.value_json(v) for v in value]) + "]}"
        if value is None or isinstance(value, bool | int | float | str):
            return f'{{"value":{_scalar_json(value)}}}'
        raise TypeError(f"cannot snapshot a {type(value).__name__}")


#: The last RNG state blob and its key: it is most often the very bytes object of the
#: snapshot before (`encode_rng_state` keeps it while the state is unchanged), ~20 kB hashed
#: again at every checkpoint otherwise (B2). Kept alive here, so `is` is exact.
_LAST_RNG: list[tuple[bytes, str]] = []


def _rng_key(data: bytes) -> str:
    """`sha256(data).hexdigest()`, not computed again for the RNG blob of the last snapshot."""
    last = _LAST_RNG[-1] if _LAST_RNG else None  # one read: another thread may replace it
    if last is not None and last[0] is data:
        return last[1]
    key = hashlib.sha256(data).hexdigest()
    _LAST_RNG[:] = [(data, key)]
    return key


#: The JSON array body of each shape met (`4,1,3,3`); bounded by the distinct shapes.
_SHAPES: dict[tuple[int, ...], str] = {}

#: `encode_string(dtype_name(dtype))` per dtype met.
_DTYPE_JSON: dict[torch.dtype, str] = {}


def _dtype_json(dtype: torch.dtype) -> str:
    text = _DTYPE_JSON.get(dtype)
    if text is None:
        text = _DTYPE_JSON[dtype] = encode_string(dtype_name(dtype))
    return text


def _scalar_json(value: Any) -> str:
    """A JSON scalar as json's C encoder writes it with `allow_nan=False` (same checks, order)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return encode_string(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")
        return float.__repr__(value)
    raise TypeError(f"cannot snapshot a {type(value).__name__}")


def write_snapshot(
    db: RunStore,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng_state: bytes,
    position: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    grads: Mapping[str, Tensor] | None = None,
    taken: Taken | None = None,
) -> SnapshotStats:
    """Store a snapshot; returns its manifest key and what it cost.

    `grads` (parameter name -> `.grad`) matter to a snapshot taken inside a boundary: the
    controller's telemetry reads the last step's gradient norms before the next step.
    `taken`: the model's and the optimizer's state dicts and a bytes reader, when the caller
    (a checkpoint) reads the same state for its fingerprints.
    """
    model_state, optimizer_state, data = taken or (
        model.state_dict(),
        optimizer.state_dict(),
        tensor_bytes,
    )
    w = _Writer(db, data)
    # The tensor references live in their own blob, so that a snapshot of unchanged state
    # shares it too and adds only the small top-level manifest. Its canonical JSON, written
    # directly: `{"grads": …, "model": …, "optimizer": …, "rng": …}` (keys sorted), the
    # blobs named in the order model, optimizer, rng, grads.
    model_json = w.tensors_json(model_state)
    optimizer_json = w.value_json(optimizer_state)
    rng_key = w.blob(rng_state, _rng_key(rng_state))
    grads_json = w.tensors_json(grads or {})
    state = (
        f'{{"grads":{grads_json},"model":{model_json},'
        f'"optimizer":{optimizer_json},"rng":"{rng_key}"}}'
    )
    manifest = {
        "format": SNAPSHOT_FORMAT,
        "state": w.blob(state.encode("utf-8")),
        "position": dict(position),
        # Its own blob too: trainer state that did not change is not stored again (B8).
        "extra": w.blob(canonical_bytes(dict(extra or {}))),
    }
    key = w.blob(canonical_bytes(manifest))
    w.flush()
    return SnapshotStats(key, w.tensors, w.new_blobs, w.new_bytes, w.total_bytes)


#: The dtypes a snapshot may name. A manifest is read from the file, so its dtype is looked up
#: here rather than with `getattr(torch, name)`, which would hand back any torch attribute.
SNAPSHOT_DTYPES: Mapping[str, torch.dtype] = {
    dtype_name(t): t
    for t in (
        torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64,
        torch.complex128, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
        torch.bool,
    )
}  # fmt: skip


def _tensor(db: RunStore, ref: Mapping[str, Any]) -> Tensor:
    blob = str(ref.get("blob"))
    dtype = SNAPSHOT_DTYPES.get(str(ref.get("dtype")))
    shape = ref.get("shape")
    if (
        dtype is None
        or not isinstance(shape, list)
        or not all(isinstance(n, int) and n >= 0 for n in shape)
    ):
        raise TamperDetected(None, f"snapshot tensor {blob}: invalid dtype or shape {ref!r}")
    data = bytearray(db.get_blob(blob))
    count = 1
    for n in shape:
        count *= n
    if len(data) != count * dtype.itemsize:
        raise TamperDetected(
            None, f"snapshot tensor {blob}: {len(data)} bytes for shape {shape} of {dtype}"
        )
    flat = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
    return flat.reshape(shape).clone()


def _restore(db: RunStore, node: Mapping[str, Any]) -> Any:
    if "tensor" in node:
        return _tensor(db, node["tensor"])
    if "map" in node:
        return {_restore(db, k): _restore(db, v) for k, v in node["map"]}
    if "list" in node:
        return [_restore(db, v) for v in node["list"]]
    return node["value"]


def read_snapshot(db: RunStore, key: str) -> dict[str, Any]:
    """A snapshot back: `model` and `optimizer` state dicts, `rng` bytes, grads, position, extra."""
    manifest = json.loads(db.get_blob(key))
    if manifest.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(f"unknown snapshot format {manifest.get('format')!r}")
    state = json.loads(db.get_blob(manifest["state"]))
    return {
        "model": {k: _tensor(db, ref) for k, ref in state["model"].items()},
        "optimizer": _restore(db, state["optimizer"]),
        "rng": db.get_blob(state["rng"]),
        "grads": {k: _tensor(db, ref) for k, ref in state.get("grads", {}).items()},
        "position": manifest["position"],
        "extra": (
            json.loads(db.get_blob(manifest["extra"]))
            if isinstance(manifest["extra"], str)
            else manifest["extra"]
        ),
    }


def write_weights(db: RunStore | None, state: Mapping[str, Tensor]) -> str:
    """Store a weights-only snapshot of a `state_dict`; returns its key (None db: key only).

    Its manifest names one blob per tensor, as a full snapshot's does, so the host's
    unchanged tensors are shared with the run's later snapshots.
    """
    w = _Writer(db)
    # Canonical JSON of `{"format": …, "kind": "weights", "model": {name: reference}}`.
    manifest = f'{{"format":{SNAPSHOT_FORMAT},"kind":"weights","model":{w.tensors_json(state)}}}'
    key = w.blob(manifest.encode("utf-8"))
    w.flush()
    return key


def read_weights(db: RunStore, key: str) -> dict[str, Tensor]:
    """A weights-only snapshot back, as a `state_dict` (every blob checked against its key)."""
    manifest = json.loads(db.get_blob(key))
    if manifest.get("format") != SNAPSHOT_FORMAT or manifest.get("kind") != "weights":
        raise ValueError(f"blob {key} is not a weights snapshot")
    return {k: _tensor(db, ref) for k, ref in manifest["model"].items()}
