"""A replayed model as a file, and back into a fresh host (`replay --out FILE`).

The file is a `torch.save` of a dict: `format`, `run_id`, `branch`, `seq`, `fingerprint`,
`manifest` (the architecture manifest), `config` and `master_seed` (to rebuild a built-in
host), `events` (the architecture's events, `[type, payload]` in log order: seed layers and
seed lifecycle, which rebuild the kernels exactly) and `state_dict`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from esper_es.config import config_from_record
from esper_es.core import events as ev
from esper_es.core.envelope import RecordedEvent
from esper_es.errors import StorageError
from esper_es.nn.fingerprint import architecture_manifest, model_fingerprint
from esper_es.nn.projector import Projector
from esper_es.replay.errors import Divergence, NotAModelFile

EXPORT_FORMAT = 1


def export_model(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    run_id: str,
    branch: str,
    seq: int,
    config: dict[str, Any],
    master_seed: int,
    events: Iterable[RecordedEvent],
) -> str:
    """Write `model` with what rebuilds its architecture; returns its fingerprint."""
    arch = [
        [rec.type, dict(rec.payload)]
        for rec in events
        if isinstance(rec.event, ev.SeedEvent | ev.SeedLayerRegistered)
    ]
    fingerprint = model_fingerprint(model)
    data = {
        "format": EXPORT_FORMAT,
        "run_id": run_id,
        "branch": branch,
        "seq": seq,
        "fingerprint": fingerprint,
        "manifest": architecture_manifest(model),
        "config": config,
        "master_seed": master_seed,
        "events": arch,
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }
    # Opened here, not by torch.save: a place that cannot be written is then an OSError the
    # command line reports in one line (torch's own writer raises a bare RuntimeError).
    try:
        with open(path, "wb") as fh:
            torch.save(data, fh)
    except OSError as exc:
        raise StorageError(
            str(path), f"cannot write the model file ({exc.strerror or exc})"
        ) from None
    return fingerprint


def check_writable(path: str | os.PathLike[str]) -> None:
    """Refuse, before any work, an output path whose directory cannot take the file."""
    parent = Path(path).absolute().parent
    if not parent.is_dir():
        raise StorageError(str(path), f"no such directory: {parent}")
    if not os.access(parent, os.W_OK) or Path(path).is_dir():
        raise StorageError(
            str(path), "cannot write there (read-only, no permission, or a directory)"
        )


def load_model(path: str | os.PathLike[str], host: nn.Module | None = None) -> nn.Module:
    """Load a `replay --out` file into a fresh host; the result has the recorded fingerprint.

    `host=None` builds the built-in host of the run's config (digits CNN or char transformer);
    for your own host pass a fresh instance, built as the original was before training (its
    weights are overwritten). The seed layers and kernels are rebuilt from the recorded
    events, then the weights are loaded; a fingerprint that does not match raises Divergence.
    """
    # Files are untrusted: only tensors and plain containers are unpickled, so a crafted file
    # cannot run code (what `weights_only=False` would allow).
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except OSError:
        raise
    except Exception as exc:
        # torch's restricted unpickler raises many types on junk (UnpicklingError, KeyError,
        # EOFError, RuntimeError…): all of them mean "not a model file".
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NotAModelFile(str(path), f"refused to load it ({reason})") from None
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise NotAModelFile(str(path), f"unknown model file format {found!r}")
    if host is None:
        from esper_es.trainer.tasks import build_task

        host = build_task(config_from_record(data["config"]), int(data["master_seed"])).host
    projector = Projector(host)
    for i, (type_name, payload) in enumerate(data["events"], start=1):
        projector.apply(i, ev.from_payload(type_name, payload))
    host.load_state_dict(data["state_dict"])
    fingerprint = model_fingerprint(host)
    if fingerprint != data["fingerprint"]:
        raise Divergence(
            int(data["seq"]), -1, f"{path}: the loaded model's fingerprint differs",
            recorded=data["fingerprint"], recomputed=fingerprint,
        )  # fmt: skip
    return host
