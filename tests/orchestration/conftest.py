"""Fixtures of the orchestration tests: a run with seed layers on a real run database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from orch_support import Run


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """`make_run({"layer1": 4})`: a started run with those layers; closed after the test."""
    runs: list[Run] = []

    def make(layers: dict[str, int] | None = None, **kw: object) -> Run:
        run = Run(tmp_path / f"run{len(runs)}.db", layers or {"layer1": 4}, **kw)  # type: ignore[arg-type]
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.close()
