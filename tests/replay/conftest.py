"""Fixtures of the replay tests: a small digits config whose controller decides at once."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from replay_support import QUICK

from esper_es.config import RunConfig, config_from_dict


@pytest.fixture
def quick() -> RunConfig:
    """The quick run config (8 steps an epoch, 3 epochs)."""
    return config_from_dict(tomllib.loads(QUICK))


@pytest.fixture
def quick_toml(tmp_path: Path) -> Path:
    """The quick run config as a TOML file."""
    path = tmp_path / "quick.toml"
    path.write_text(QUICK, encoding="utf-8")
    return path
