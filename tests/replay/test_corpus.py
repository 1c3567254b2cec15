"""The replay corpus (replay/): every recorded run and branch replays to its expected state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esper_es.replay import replay
from esper_es.store.database import RunDatabase
from esper_es.store.verify import verify

CORPUS = Path(__file__).resolve().parents[2] / "replay"
RUNS = sorted(p.parent.name for p in CORPUS.glob("*/expected.json"))


def test_the_corpus_has_its_three_runs() -> None:
    assert {"digits", "text", "rollback"} <= set(RUNS)
    for name in RUNS:
        assert (CORPUS / name / "run.db").stat().st_size < 1_000_000


@pytest.mark.parametrize("name", RUNS)
def test_every_branch_replays_to_its_expected_fingerprint(name: str) -> None:
    db = CORPUS / name / "run.db"
    expected = json.loads((CORPUS / name / "expected.json").read_text())
    report = verify(db)
    assert report.run_id == expected["run_id"]
    with RunDatabase.open(db, readonly=True) as rdb:
        recorded = {
            str(r.seq): r.payload["fingerprint"]
            for r in rdb.read(branch=None, types=["Checkpointed"])
        }
    assert recorded == expected["checkpoints"]
    for branch, want in expected["branches"].items():
        result = replay(db, branch=branch)
        assert (result.head_seq, result.fingerprint) == (want["head_seq"], want["fingerprint"])
        assert result.checkpoints_checked > 0
