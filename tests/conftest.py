"""Session-wide set-up: the suite runs with portable numerics pinned (SPEC §5).

The pins must be in the environment before torch is imported, and this file is imported
before any test module, so pinning here makes every in-process run of the suite use the same
AVX2 code paths on every x86-64 machine: the replay corpus (recorded in portable mode)
replays in-process, and results do not depend on which CPU CI happens to get. Tests of
`native` mode run their commands in subprocesses with the pins removed
(`tests/runtime/numerics_support.py`).
"""

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from esper_es.numerics import pin_portable

# Nothing above imports torch; this must stay first among anything that does.
pin_portable()

CORPUS = Path(__file__).resolve().parents[1] / "replay"


@pytest.fixture
def corpus_copy(tmp_path: Path) -> Callable[[str], Path]:
    """A writable copy of a replay-corpus run (its database and audit trail) in `tmp_path`."""

    def copy(name: str) -> Path:
        db = tmp_path / "run.db"
        shutil.copy(CORPUS / name / "run.db", db)
        shutil.copy(CORPUS / name / "run.db.audit.jsonl", str(db) + ".audit.jsonl")
        return db

    return copy


@pytest.fixture
def pg_url() -> str:
    """A `postgresql://…` location for a new run (its own schema) on the test server."""
    from pg_support import fresh_url

    return fresh_url()
