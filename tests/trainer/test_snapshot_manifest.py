"""A snapshot's manifest is read from the file: a crafted dtype or shape is a verification
failure naming the tensor, never a torch attribute lookup or a traceback (SPEC §9)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from esper_es.errors import TamperDetected
from esper_es.store.database import RunDatabase
from esper_es.trainer.snapshots import SNAPSHOT_DTYPES, _tensor


@pytest.fixture
def db(tmp_path: Path) -> RunDatabase:
    with RunDatabase.create(tmp_path / "run.db", "run-test") as created:
        created.put_blob(torch.arange(6, dtype=torch.float32).numpy().tobytes())
    return RunDatabase.open(tmp_path / "run.db")


def _key(db: RunDatabase) -> str:
    return str(db.connection.execute("SELECT key FROM blobs").fetchone()[0])


def test_a_genuine_ref_restores_the_tensor(db: RunDatabase) -> None:
    with db:
        t = _tensor(db, {"blob": _key(db), "dtype": "float32", "shape": [2, 3]})
    assert torch.equal(t, torch.arange(6, dtype=torch.float32).reshape(2, 3))


@pytest.mark.parametrize(
    "change",
    [
        {"dtype": "load"},  # getattr(torch, "load") would have been a function
        {"dtype": "nn"},
        {"dtype": None},
        {"shape": [4, 4]},  # more elements than the blob holds
        {"shape": [-2, -3]},
        {"shape": "2,3"},
        {"dtype": "float64"},  # 24 bytes hold 3 doubles, not 6
    ],
)
def test_a_crafted_ref_is_tampering(db: RunDatabase, change: dict[str, object]) -> None:
    ref = {"blob": _key(db), "dtype": "float32", "shape": [2, 3], **change}
    with db, pytest.raises(TamperDetected, match="snapshot tensor"):
        _tensor(db, ref)


def test_every_dtype_a_model_can_hold_is_allowed() -> None:
    assert {"float32", "float16", "bfloat16", "float64", "int64", "bool"} <= set(SNAPSHOT_DTYPES)
