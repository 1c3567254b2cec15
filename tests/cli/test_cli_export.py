"""`esper-es export`: a run's metrics as CSV or TensorBoard scalars, read from its log."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from esper_es.errors import EXIT_OK, EXIT_USAGE


@pytest.fixture
def run_db(corpus_copy) -> Path:
    return corpus_copy("digits")


def _epochs(cli, db: Path) -> list[dict]:
    events = cli("history", db, "--type", "EpochCompleted", "--json").json()["events"]
    return [e["payload"] for e in events]


def test_csv_has_every_epoch_metric_and_each_seed_alpha(cli, run_db: Path) -> None:
    r = cli("export", run_db)
    assert r.code == EXIT_OK, r.err
    rows = list(csv.DictReader(io.StringIO(r.out)))
    header = r.out.splitlines()[0].split(",")
    assert header[:5] == ["step", "epoch", "train_loss", "val_loss", "val_accuracy"]
    by_step = {int(row["step"]): row for row in rows}
    epochs = _epochs(cli, run_db)
    assert epochs
    for e in epochs:
        row = by_step[e["step"]]
        # Written with repr: the CSV holds the logged float exactly.
        assert float(row["val_loss"]) == e["val_loss"]
        assert float(row["val_accuracy"]) == e["val_accuracy"]
        assert int(row["epoch"]) == e["epoch"]
    blends = cli("history", run_db, "--type", "BlendAdjusted", "--json").json()["events"]
    assert blends, "the corpus run blends a seed"
    last = blends[-1]["payload"]
    assert float(by_step[last["step"]][f"alpha/{last['seed']}"]) == last["alpha"]
    assert [int(row["step"]) for row in rows] == sorted(by_step)


def test_csv_to_a_file_and_json_summary(cli, run_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.csv"
    r = cli("export", run_db, "--out", out, "--json")
    assert r.code == EXIT_OK, r.err
    obj = r.json()
    assert obj["written"] == len(out.read_text().splitlines()) - 1
    assert "val_loss" in obj["series"]


def test_tensorboard_scalars_read_back(cli, run_db: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = cli("export", run_db, "--format", "tensorboard", "--out", tmp_path / "tb", "--json")
    assert r.code == EXIT_OK, r.err
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert set(r.json()["series"]) == set(acc.Tags()["scalars"])
    got = [(s.step, s.value) for s in acc.Scalars("val_loss")]
    want = [(e["step"], e["val_loss"]) for e in _epochs(cli, run_db)]
    assert [s for s, _ in got] == [s for s, _ in want]
    # TensorBoard stores 32-bit floats.
    assert all(
        abs(a - b) <= 1e-6 * max(1.0, abs(b)) for (_, a), (_, b) in zip(got, want, strict=True)
    )


def test_tensorboard_needs_an_out_folder(cli, run_db: Path) -> None:
    r = cli("export", run_db, "--format", "tensorboard")
    assert r.code == EXIT_USAGE
    assert "--out" in r.err
