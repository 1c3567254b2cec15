"""Per-step metrics: the training loss and learning rate of every k-th step, one
`StepMetricsRecorded` per epoch beside its `EpochCompleted`, replayed and exported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esper_es.config import config_from_dict, config_from_record
from esper_es.core.lr_schedule import lr_factor


def _events(cli, db: Path, kind: str) -> list[dict]:
    out = cli("history", db, "--type", kind, "--format", "json").out
    return [json.loads(line)["payload"] for line in out.splitlines()]


def _train(cli, tmp_path: Path, toml: str, name: str) -> Path:
    config = tmp_path / f"{name}.toml"
    config.write_text(toml)
    db = tmp_path / f"{name}.db"
    r = cli("train", "--config", config, "--db", db, "--json")
    assert r.code == 0, r.err
    return db


def test_every_step_of_every_epoch_with_the_scheduled_rate(cli, tmp_path: Path) -> None:
    db = _train(
        cli,
        tmp_path,
        "[train]\nepochs = 2\nlr = 0.01\nlr_schedule = 'cosine'\nlr_warmup_steps = 5\n"
        "lr_min_factor = 0.1\n",
        "cosine",
    )
    metrics = _events(cli, db, "StepMetricsRecorded")
    epochs = [e for e in _events(cli, db, "EpochCompleted") if e["epoch"] > 0]
    assert [m["epoch"] for m in metrics] == [1, 2]
    per_epoch = epochs[0]["metrics"]["steps"]
    assert metrics[0]["steps"] == list(range(1, per_epoch + 1))
    assert metrics[1]["steps"] == list(range(per_epoch + 1, 2 * per_epoch + 1))
    for m, e in zip(metrics, epochs, strict=True):
        # The epoch's train_loss is the mean of exactly these per-step losses.
        assert sum(m["train_loss"]) / len(m["train_loss"]) == pytest.approx(e["train_loss"])
        assert m["step"] == e["step"]
    horizon = 2 * per_epoch
    want = [0.01 * lr_factor("cosine", s - 1, horizon, 5, 0.1) for s in metrics[1]["steps"]]
    assert metrics[1]["lr"] == pytest.approx(want)
    assert metrics[0]["lr"][0] < metrics[0]["lr"][5]  # warming up
    # Replayed bit for bit, recomputed to the same events, exported per step.
    assert cli("replay", db, "--recompute-decisions").code == 0
    csv = cli("export", db).out.splitlines()
    assert "step/train_loss" in csv[0] and "lr" in csv[0].split(",")
    assert len(csv) >= 1 + horizon


def test_every_kth_step_or_none(cli, tmp_path: Path) -> None:
    db = _train(cli, tmp_path, "[train]\nepochs = 1\nmetrics_every_steps = 5\n", "k5")
    (m,) = _events(cli, db, "StepMetricsRecorded")
    assert m["steps"] and all(s % 5 == 0 for s in m["steps"])
    assert len(m["train_loss"]) == len(m["lr"]) == len(m["steps"])
    off = _train(cli, tmp_path, "[train]\nepochs = 1\nmetrics_every_steps = 0\n", "off")
    assert _events(cli, off, "StepMetricsRecorded") == []


def test_a_config_recorded_before_the_key_existed_records_none() -> None:
    recorded = config_from_dict({}).to_dict()
    del recorded["train"]["metrics_every_steps"]
    # A run recorded then wrote no StepMetricsRecorded; re-executing it must not either.
    assert config_from_record(recorded).train.metrics_every_steps == 0
    assert config_from_dict({}).train.metrics_every_steps == 1
