"""Fixtures of the trainer tests: small, fast run configs (a subset of digits, few epochs)."""

from __future__ import annotations

from pathlib import Path

import pytest

#: A quick digits run whose controller decides at once: every validation counts as a plateau.
QUICK = """
[train]
epochs = 3
batch_size = 32
controller_every_steps = 4

[host]
max_train_examples = 320
max_val_examples = 128

[driver]
contribution_examples = 64
fine_tune_steps = 4
evaluation_steps = 2

[lifecycle]
min_training_steps = 4
min_stabilization_steps = 2
embargo_steps = 4

[blending]
ramp_steps = 4

[controller]
plateau_window = 1
plateau_threshold = 100.0
cooldown_steps = 4
max_adaptations_per_epoch = 4
"""


@pytest.fixture
def quick_config(tmp_path: Path) -> Path:
    """A TOML run config for a ~1 s training run that germinates seeds."""
    path = tmp_path / "quick.toml"
    path.write_text(QUICK, encoding="utf-8")
    return path
