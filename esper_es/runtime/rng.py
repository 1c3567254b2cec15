"""Seeds and random-number state (SPEC §5): derived seeds, dedicated generators, digests.

Every random draw that shapes a run comes from a `torch.Generator` seeded by `derive_seed`
from the master seed and tags naming its purpose (a germination event, a data epoch), never
from the global RNG, so adding a draw in one place cannot shift the stream of another.

Derivation: SHA-256 of `esper-es/derive_seed/v1\\0` followed by the canonical JSON of
`[master_seed, *tags]` (so `1` and `"1"` are different tags, and tags cannot run together);
the first 8 bytes, big-endian, shifted right by one give a 63-bit non-negative seed, which
every consumer (torch, numpy, `random`) accepts.

Snapshots: `capture_rng_state` gives `{"format": 1, "torch_cpu": bytes, "python": bytes,
"numpy": bytes, "generators": {name: bytes}}` (plus `"torch_cuda": [bytes, ...]` once CUDA is
initialised); `encode_rng_state` turns that into one blob. `rng_digest` gives, per component,
`sha256:` + the hex SHA-256 of exactly those bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from esper_es.core.canonical import canonical_bytes
from esper_es.core.ids import derive_seed

RNG_STATE_FORMAT = 1


def generator(master_seed: int, *tags: str | int) -> torch.Generator:
    """A dedicated CPU generator seeded with `derive_seed(master_seed, *tags)`."""
    g = torch.Generator(device="cpu")
    g.manual_seed(derive_seed(master_seed, *tags))
    return g


def data_order(master_seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order of `n` examples in `epoch`: a permutation from its own generator (int64)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return torch.randperm(n, generator=generator(master_seed, "data_order", epoch))


def _generator_bytes(g: torch.Generator) -> bytes:
    return bytes(g.get_state().numpy().tobytes())


#: The last value each memoised encoding computed, with the input it was computed from.
_LAST: dict[str, tuple[Any, Any]] = {}


def _memoised(name: str, key: Any, compute: Callable[[], Any]) -> Any:
    """`compute()`, or its last result when `key` equals the key it was computed for.

    A checkpoint encodes and hashes every RNG state, and most runs never draw from the global
    `random` and numpy RNGs (nor from torch's when nothing uses dropout): their states do not
    change from one checkpoint to the next, and their canonical JSON (~0.1 ms) and digests are
    the same bytes as last time. Comparing the state itself costs a few µs (B2).
    """
    last = _LAST.get(name)
    if last is not None and last[0] == key:
        return last[1]
    value = compute()
    _LAST[name] = (key, value)
    return value


def _python_bytes() -> bytes:
    version, internal, gauss_next = state = random.getstate()
    # gauss_next is None or a finite float, which JSON round-trips exactly.
    return _memoised(  # type: ignore[no-any-return]
        "python", state, lambda: canonical_bytes([version, list(internal), gauss_next])
    )


def _numpy_bytes() -> bytes:
    state = np.random.get_state(legacy=False)
    assert isinstance(state, dict)
    key = state["state"]["key"]
    pos, has_gauss, gauss = int(state["state"]["pos"]), int(state["has_gauss"]), state["gauss"]
    return _memoised(  # type: ignore[no-any-return]
        "numpy",
        (state["bit_generator"], key.tobytes(), pos, has_gauss, float(gauss)),
        lambda: canonical_bytes(
            {
                "bit_generator": state["bit_generator"],
                "key": key.tolist(),  # Python ints, as `int(k)` each
                "pos": pos,
                "has_gauss": has_gauss,
                "gauss": float(gauss),
            }
        ),
    )


def _state_key(state: Mapping[str, Any]) -> tuple[Any, ...]:
    """Everything of a `capture_rng_state` snapshot, as one comparable tuple."""
    return (
        state.get("format"),
        state["torch_cpu"],
        state["python"],
        state["numpy"],
        tuple(state["generators"].items()),
        tuple(state.get("torch_cuda", ())),
    )


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Snapshot the global torch / `random` / numpy RNGs and `generators`, as bytes."""
    state: dict[str, Any] = {
        "format": RNG_STATE_FORMAT,
        "torch_cpu": bytes(torch.get_rng_state().numpy().tobytes()),
        "python": _python_bytes(),
        "numpy": _numpy_bytes(),
        "generators": {name: _generator_bytes(g) for name, g in sorted((generators or {}).items())},
    }
    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        # This process's GPU only: a rank of a data-parallel run trains on one device, and
        # every rank must hold (and compare) the same state, as for the CPU generator.
        state["torch_cuda"] = [bytes(torch.cuda.get_rng_state().numpy().tobytes())]
    return state


def _byte_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def restore_rng_state(
    state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None
) -> None:
    """Put the global RNGs and `generators` back to a `capture_rng_state` snapshot.

    Each generator given must be in the snapshot; snapshot generators not given are left alone,
    so a caller may restore only the global RNGs.
    """
    if state.get("format") != RNG_STATE_FORMAT:
        raise ValueError(f"unknown RNG state format {state.get('format')!r}")
    saved = state["generators"]
    missing = sorted(set(generators or {}) - set(saved))
    if missing:
        raise KeyError(f"RNG snapshot has no state for generators {missing}")
    torch.set_rng_state(_byte_tensor(state["torch_cpu"]))
    version, internal, gauss_next = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss_next))
    np_state = json.loads(state["numpy"])
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np.array(np_state["key"], dtype=np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    for name, g in (generators or {}).items():
        g.set_state(_byte_tensor(saved[name]))
    if "torch_cuda" in state:
        torch.cuda.set_rng_state(_byte_tensor(state["torch_cuda"][0]))


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def rng_digest(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, str]:
    """Digests of every RNG state for `Checkpointed`: `{component: "sha256:…"}`.

    Keys: `torch_cpu`, `python`, `numpy`, `generator:<name>` per given generator, and
    `torch_cuda:0` (this process's GPU) once CUDA is initialised.
    """
    return digest_of(capture_rng_state(generators))


def digest_of(state: Mapping[str, Any]) -> dict[str, str]:
    """`rng_digest` of a `capture_rng_state` snapshot already taken."""
    return dict(_memoised("digest", _state_key(state), lambda: _digest_of(state)))


def _digest_of(state: Mapping[str, Any]) -> dict[str, str]:
    out = {key: _sha(state[key]) for key in ("torch_cpu", "python", "numpy")}
    out.update({f"generator:{n}": _sha(b) for n, b in state["generators"].items()})
    for i, data in enumerate(state.get("torch_cuda", [])):
        out[f"torch_cuda:{i}"] = _sha(data)
    return out


def encode_rng_state(state: Mapping[str, Any]) -> bytes:
    """One canonical-JSON blob of a `capture_rng_state` snapshot (bytes as base64)."""
    return _memoised("encoded", _state_key(state), lambda: _encode_rng_state(state))  # type: ignore[no-any-return]


def _encode_rng_state(state: Mapping[str, Any]) -> bytes:

    def enc(value: Any) -> Any:
        if isinstance(value, bytes):
            return {"b64": base64.b64encode(value).decode("ascii")}
        if isinstance(value, Mapping):
            return {k: enc(v) for k, v in value.items()}
        if isinstance(value, list):
            return [enc(v) for v in value]
        return value

    return canonical_bytes(enc(state))


def decode_rng_state(blob: bytes) -> dict[str, Any]:
    """The snapshot `encode_rng_state` wrote."""

    def dec(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"b64"}:
                return base64.b64decode(value["b64"])
            return {k: dec(v) for k, v in value.items()}
        if isinstance(value, list):
            return [dec(v) for v in value]
        return value

    result = dec(json.loads(blob))
    assert isinstance(result, dict)
    return result


def seed_everything(seed: int) -> None:
    """Seed the global torch, `random` and numpy RNGs as `train` does before building a host.

    Call it before building your model, with the seed you pass to `train`: the model's
    initial weights then equal those of `train(<a function building it>, seed=seed)`.
    """
    torch.manual_seed(derive_seed(seed, "host_factory"))
    random.seed(derive_seed(seed, "host_factory", "python"))
    np.random.seed(derive_seed(seed, "host_factory", "numpy") % 2**32)
