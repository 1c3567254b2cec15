"""Validation shared by the ranks (SPEC §11): every example once, the same means as one rank."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from esper_es.store.database import RunDatabase
from esper_es.trainer.distributed import shard_val_batches

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [4, 7, 512])
def test_every_validation_example_is_in_exactly_one_ranks_part(world: int, batch_size: int) -> None:
    x = torch.arange(23).reshape(23, 1)
    y = torch.arange(23) % 3
    parts = [shard_val_batches((x, y), batch_size, r, world) for r in range(world)]
    xs = [b[0] for part in parts for b in part]
    ys = [b[1] for part in parts for b in part]
    assert torch.equal(torch.cat(xs), x) and torch.equal(torch.cat(ys), y)
    assert all(len(b[0]) <= batch_size for part in parts for b in part)


def test_batches_given_as_batches_are_dealt_out_one_rank_each() -> None:
    batches = [(torch.full((2, 1), i), torch.zeros(2)) for i in range(5)]
    parts = [shard_val_batches(batches, 512, r, 2) for r in range(2)]
    assert [int(b[0][0, 0]) for b in parts[0]] == [0, 2, 4]
    assert [int(b[0][0, 0]) for b in parts[1]] == [1, 3]


def _initial_quality(db: Path, nproc: int) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "esper_es.cli.main", "train", "--epochs", "1", "--db", str(db),
           "--nproc", str(nproc), "--json"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    json.loads(done.stdout)
    with RunDatabase.open(db, readonly=True) as rdb:
        first = next(iter(rdb.read(types=["EpochCompleted"]))).payload
    assert first["epoch"] == 0
    return float(first["val_loss"]), float(first["val_accuracy"])


def test_two_ranks_measure_the_initial_host_as_one_rank_does(tmp_path: Path) -> None:
    # Boundary 0 validates the initial host, the same weights on any number of ranks: the
    # two halves' sums give the whole set's means (to float32 rounding: each half's loss is a
    # float32 mean over its examples).
    one = _initial_quality(tmp_path / "one.db", 1)
    two = _initial_quality(tmp_path / "two.db", 2)
    assert two == pytest.approx(one, rel=1e-6)
    assert two[1] == one[1]  # the accuracy counts the same correct answers
