"""Fixtures of the trainer tests: small, fast run configs (a subset of digits, few epochs)."""

from __future__ import annotations

from pathlib import Path

import pytest

#: A quick digits run whose controller decides at once: every validation counts as a plateau.
QUICK = (Path(__file__).resolve().parents[1] / "fixtures" / "quick_trainer_run.toml").read_text(
    "utf-8"
)


@pytest.fixture
def quick_config(tmp_path: Path) -> Path:
    """A TOML run config for a ~1 s training run that germinates seeds."""
    path = tmp_path / "quick.toml"
    path.write_text(QUICK, encoding="utf-8")
    return path
