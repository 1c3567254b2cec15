"""The host's weights at the start of a run, in the log (SPEC §5, last bullet).

Live, the trainer stores the model's `state_dict` after placement and before step 1 as a
content-addressed weights snapshot (`snapshots.write_weights`) and records its key and the
SPEC §7 fingerprint in `RunStarted.initial_weights`. Replay, resume and rollback load them
into the freshly built host before anything runs (`restore_initial_weights`), so a re-executed
run never depends on how user code initialised the host (an unseeded `MyNet()`, a different
init scheme, a pretrained checkpoint that has since changed on disk). The restored weights
are checked against the recorded fingerprint; a host whose parameters do not have the
recorded names and shapes is not the run's host and is refused (exit 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from esper_es.errors import HostFactoryError, TamperDetected
from esper_es.nn.fingerprint import model_fingerprint, state_dict_fingerprint
from esper_es.store.protocol import RunStore
from esper_es.trainer.snapshots import read_weights, write_weights


def record_initial_weights(db: RunStore, model: nn.Module) -> dict[str, str]:
    """Store `model`'s weights; the `RunStarted.initial_weights` record naming them."""
    state = model.state_dict()
    return {"snapshot": write_weights(db, state), "fingerprint": state_dict_fingerprint(state)}


def restore_initial_weights(db: RunStore, record: Mapping[str, Any], model: nn.Module) -> None:
    """Load the recorded initial weights into `model` (a freshly built, placed host)."""
    key, fingerprint = str(record["snapshot"]), str(record["fingerprint"])
    try:
        state = read_weights(db, key)
    except (KeyError, ValueError) as exc:
        raise TamperDetected(
            None, f"the run's initial weights ({key}) are unreadable: {exc}"
        ) from exc
    if state_dict_fingerprint(state) != fingerprint:
        raise TamperDetected(
            None, f"the run's initial weights {key} do not match RunStarted's {fingerprint}"
        )
    own = model.state_dict()
    missing = sorted(set(state) - set(own))
    extra = sorted(set(own) - set(state))
    shapes = sorted(
        k for k in set(state) & set(own)
        if (own[k].shape, own[k].dtype) != (state[k].shape, state[k].dtype)
    )  # fmt: skip
    if missing or extra or shapes:
        parts = [
            f"{what}: {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}"
            for what, keys in (
                ("recorded but not in this host", missing),
                ("in this host but not recorded", extra),
                ("shape or dtype differs", shapes),
            )
            if keys
        ]
        raise HostFactoryError(
            "the host built for re-execution is not the run's host ("
            + "; ".join(parts)
            + "); pass the factory the run was trained with (--factory module:function)"
        )
    model.load_state_dict(state, strict=True)
    if model_fingerprint(model) != fingerprint:
        raise TamperDetected(None, f"restoring the initial weights did not give {fingerprint}")
