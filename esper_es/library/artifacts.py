"""Kernel artifacts: a kernel's module definition and initial weights as one canonical byte string.

Layout (all integers little-endian): the magic `esper-kernel/1\\n`, an 8-byte header length,
the header (canonical JSON: `kernel_id`, `blueprint`, `version`, `config`, `shape_kind`,
`channels`, `init_seed` and `tensors`, a list of `[name, dtype, shape]` in state_dict key
order), then each tensor's contiguous bytes in that order. The same kernel always gives the
same bytes, so an artifact is addressed by the SHA-256 of its bytes and also indexed by its
kernel id (which hashes only the recipe, not the weights).
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any, Final

import attrs
import torch

from esper_es.core.canonical import canonical_json
from esper_es.errors import EXIT_VERIFY, EsperError
from esper_es.nn.kernels import Kernel, KernelSpec, build_kernel_from_spec

MAGIC: Final = b"esper-kernel/1\n"
_DTYPES: Final = {
    str(t).removeprefix("torch."): t
    for t in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64)
}


class ArtifactMismatch(EsperError):
    """A kernel does not match the artifact stored under its id (exit 3: verification)."""

    exit_code = EXIT_VERIFY

    def __init__(self, kernel_id: str, reason: str) -> None:
        self.kernel_id = kernel_id
        self.reason = reason
        super().__init__(f"kernel {kernel_id}: {reason}")


@attrs.frozen
class KernelArtifact:
    """A decoded artifact: the spec that names the kernel and its initial state_dict."""

    spec: KernelSpec
    state: dict[str, torch.Tensor]

    @property
    def kernel_id(self) -> str:
        """The kernel id the spec hashes to."""
        return self.spec.kernel_id


def artifact_bytes(kernel: Kernel) -> bytes:
    """The canonical artifact of `kernel` (its spec and its current weights)."""
    spec = kernel.spec
    state = {k: t.detach().to("cpu").contiguous() for k, t in kernel.state_dict().items()}
    keys = sorted(state)
    header = {
        "kernel_id": spec.kernel_id,
        "blueprint": spec.blueprint,
        "version": spec.version,
        "config": dict(spec.config),
        "shape_kind": spec.shape_kind,
        "channels": spec.channels,
        "init_seed": spec.init_seed,
        "tensors": [
            [k, str(state[k].dtype).removeprefix("torch."), list(state[k].shape)] for k in keys
        ],
    }
    head = canonical_json(header).encode("utf-8")
    parts = [MAGIC, struct.pack("<Q", len(head)), head]
    parts += [state[k].numpy().tobytes() if state[k].numel() else b"" for k in keys]
    return b"".join(parts)


def artifact_key(data: bytes) -> str:
    """The content address of an artifact (hex SHA-256, the blob key)."""
    return hashlib.sha256(data).hexdigest()


def load_artifact(data: bytes) -> KernelArtifact:
    """Decode an artifact; ArtifactMismatch if it is malformed or its id does not match."""
    if not data.startswith(MAGIC):
        raise ArtifactMismatch("?", "not a kernel artifact (bad magic)")
    at = len(MAGIC)
    (n,) = struct.unpack_from("<Q", data, at)
    at += 8
    header: dict[str, Any] = json.loads(data[at : at + n].decode("utf-8"))
    at += n
    spec = KernelSpec(
        header["blueprint"],
        int(header["version"]),
        header["config"],
        header["shape_kind"],
        int(header["channels"]),
        int(header["init_seed"]),
    )
    if spec.kernel_id != header["kernel_id"]:
        raise ArtifactMismatch(header["kernel_id"], f"its recipe hashes to {spec.kernel_id}")
    state: dict[str, torch.Tensor] = {}
    for name, dtype, shape in header["tensors"]:
        t = torch.empty(shape, dtype=_DTYPES[dtype])
        size = t.numel() * t.element_size()
        if size:
            buf = bytearray(data[at : at + size])
            t = torch.frombuffer(buf, dtype=t.dtype).reshape(shape).clone()
        state[name] = t
        at += size
    if at != len(data):
        raise ArtifactMismatch(spec.kernel_id, f"{len(data) - at} trailing bytes")
    return KernelArtifact(spec, state)


def kernel_from_artifact(data: bytes) -> Kernel:
    """Rebuild the exact kernel an artifact holds (its recipe, then its stored weights)."""
    art = load_artifact(data)
    kernel = build_kernel_from_spec(art.spec)
    kernel.load_state_dict(art.state, strict=True)
    return kernel


def check_artifact(kernel: Kernel, stored: bytes) -> None:
    """Raise ArtifactMismatch unless `kernel`'s artifact equals `stored` byte for byte."""
    check_artifact_bytes(kernel.kernel_id, artifact_bytes(kernel), stored)


def check_artifact_bytes(kernel_id: str, mine: bytes, stored: bytes) -> None:
    """Raise ArtifactMismatch unless the artifact `mine` (of `kernel_id`) equals `stored`."""
    if mine != stored:
        raise ArtifactMismatch(
            kernel_id,
            f"the kernel built from the log ({artifact_key(mine)[:12]}) differs from the stored "
            f"artifact ({artifact_key(stored)[:12]})",
        )
