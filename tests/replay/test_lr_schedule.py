"""The learning-rate schedule: its shapes, and runs that use it replay and resume bit for bit."""

from __future__ import annotations

import itertools
from pathlib import Path

import attrs
import pytest
from test_replay import stop_at

from esper_es.config import RunConfig
from esper_es.core.lr_schedule import lr_factor
from esper_es.replay import replay, resume
from esper_es.trainer import built_in_trainer


def test_constant_is_one_and_cosine_warms_up_then_decays_to_the_floor() -> None:
    assert lr_factor("constant", 17, 100, 5, 0.1) == 1.0
    warm = [lr_factor("cosine", s, 100, 4, 0.1) for s in range(4)]
    assert warm == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_factor("cosine", 4, 100, 4, 0.1) == pytest.approx(1.0)
    decay = [lr_factor("cosine", s, 100, 4, 0.1) for s in range(4, 101)]
    assert all(a >= b for a, b in itertools.pairwise(decay))
    assert decay[-1] == pytest.approx(0.1)
    assert lr_factor("cosine", 500, 100, 4, 0.1) == pytest.approx(0.1)  # past the horizon


def test_one_cycle_peaks_at_thirty_percent() -> None:
    values = [lr_factor("one_cycle", s, 100, 0, 0.05) for s in range(100)]
    assert values.index(max(values)) == 29
    assert values[0] < 0.1 and values[-1] < 0.1


def cosine(config: RunConfig) -> RunConfig:
    train = attrs.evolve(config.train, lr_schedule="cosine", lr_warmup_steps=3, lr_min_factor=0.1)
    return attrs.evolve(config, train=train)


def test_the_schedule_sets_every_group_and_changes_the_run(
    quick: RunConfig, tmp_path: Path
) -> None:
    plain = built_in_trainer(quick, seed=0, db_path=tmp_path / "a.db").run()
    trainer = built_in_trainer(cosine(quick), seed=0, db_path=tmp_path / "b.db")
    scheduled = trainer.run()
    assert scheduled.fingerprint != plain.fingerprint
    final = lr_factor("cosine", scheduled.steps - 1, scheduled.steps, 3, 0.1)
    for group in trainer.optimizer.param_groups:
        assert group["lr"] == pytest.approx(group["base_lr"] * final)


@pytest.mark.parametrize("step", [2, 11])
def test_a_scheduled_run_replays_and_resumes_bit_for_bit(
    quick: RunConfig, tmp_path: Path, step: int
) -> None:
    config = cosine(quick)
    reference = built_in_trainer(config, seed=0, db_path=tmp_path / "ref.db").run().fingerprint
    assert replay(tmp_path / "ref.db").fingerprint == reference
    path = tmp_path / "stopped.db"
    built_in_trainer(config, seed=0, db_path=path, on_step=stop_at(step)).run()
    assert resume(path).fingerprint == reference
