"""`esper-es export`: a run's metrics as CSV or TensorBoard scalars, read from its log.

The log is the only source: epoch metrics from `EpochCompleted`, the per-step training loss
and learning rate from `StepMetricsRecorded`, each seed's alpha from the blend events.
Wall times are the events' own `recorded_at`, so TensorBoard's time axis is the real one.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import attrs

from esper_es.store.protocol import RunStore

__all__ = ["EXPORT_FORMATS", "Scalar", "scalars", "write_csv", "write_tensorboard"]

#: What `esper-es export --format` accepts.
EXPORT_FORMATS = ("csv", "tensorboard")

_EPOCH_FIELDS = ("train_loss", "val_loss", "val_accuracy")
_ALPHA_EVENTS = ("BlendAdjusted", "SeedFossilized", "SeedCulled", "SeedRolledBack")
_TYPES = ("EpochCompleted", "StepMetricsRecorded", "SeedGerminated", *_ALPHA_EVENTS)


@attrs.frozen
class Scalar:
    """One value of one series at one training step."""

    step: int
    tag: str
    value: float
    wall_time: float
    epoch: int | None = None


def _wall(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def scalars(db: RunStore, branch: str = "main") -> Iterator[Scalar]:
    """The run's scalar series on `branch` (its parents' events up to the fork included)."""
    epoch = 0
    for rec in db.read(branch=branch, types=list(_TYPES)):
        p = rec.payload
        wall = _wall(rec.recorded_at)
        step = int(p.get("step") or 0)
        if rec.type == "EpochCompleted":
            epoch = int(p["epoch"])
            for name in _EPOCH_FIELDS:
                value = p.get(name)
                if isinstance(value, int | float) and math.isfinite(value):
                    yield Scalar(step, name, float(value), wall, epoch)
            for name, value in (p.get("metrics") or {}).items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    yield Scalar(step, f"epoch/{name}", float(value), wall, epoch)
        elif rec.type == "StepMetricsRecorded":
            for at, loss, lr in zip(p["steps"], p["train_loss"], p["lr"], strict=True):
                if loss is not None:
                    yield Scalar(at, "step/train_loss", float(loss), wall, int(p["epoch"]))
                yield Scalar(at, "lr", float(lr), wall, int(p["epoch"]))
        elif rec.type == "SeedGerminated":
            yield Scalar(step, f"alpha/{p['seed']}", 0.0, wall, epoch)
        elif rec.type == "BlendAdjusted":
            yield Scalar(step, f"alpha/{p['seed']}", float(p["alpha"]), wall, epoch)
        elif rec.type == "SeedFossilized":
            # A fossil keeps its alpha; a culled or rolled-back seed's output is gone (0).
            continue
        else:
            yield Scalar(step, f"alpha/{p['seed']}", 0.0, wall, epoch)


def write_csv(series: Iterable[Scalar], out: TextIO) -> int:
    """One row per step that has a value, one column per series; returns the row count."""
    rows: dict[int, dict[str, Any]] = {}
    tags: dict[str, None] = {}
    for s in series:
        row = rows.setdefault(s.step, {"step": s.step})
        if s.epoch is not None:
            row["epoch"] = s.epoch
        row[s.tag] = s.value
        tags.setdefault(s.tag, None)
    fixed = [t for t in _EPOCH_FIELDS if t in tags]
    columns = ["step", "epoch", *fixed, *sorted(t for t in tags if t not in fixed)]
    writer = csv.DictWriter(out, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow(
            {k: (repr(v) if isinstance(v, float) else v) for k, v in rows[step].items()}
        )
    return len(rows)


def write_tensorboard(series: Iterable[Scalar], log_dir: Path) -> int:
    """Scalars into a TensorBoard event file under `log_dir`; returns how many."""
    # TensorBoard's own writer (through torch), so the files are what TensorBoard expects;
    # it needs the `tensorboard` package, which the CLI names when it is missing.
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(log_dir))
    n = 0
    try:
        for s in series:
            writer.add_scalar(s.tag, s.value, global_step=s.step, walltime=s.wall_time)
            n += 1
    finally:
        writer.close()
    return n
