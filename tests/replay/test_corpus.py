"""The replay corpus (replay/): every recorded run and branch replays to its expected state.

Every run but `native` was recorded with portable numerics and replays in this (pinned)
process on any x86-64 CPU with AVX2. `native` replays bit for bit only on the CPU it was
recorded on; anywhere else the replay must be refused with exit 4 before its first step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from esper_es.numerics import cpu_identity
from esper_es.replay import replay
from esper_es.store.database import RunDatabase
from esper_es.store.verify import verify

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from numerics_support import clean_env, esper

CORPUS = Path(__file__).resolve().parents[2] / "replay"
ALL = sorted(p.parent.name for p in CORPUS.glob("*/expected.json"))
RUNS = [name for name in ALL if name != "native"]


def _started(db: Path) -> dict[str, Any]:
    with RunDatabase.open(db, readonly=True) as rdb:
        rec = next(iter(rdb.read(types=["RunStarted"])))
        return dict(rec.payload)


def test_the_corpus_has_its_runs_portable_but_one() -> None:
    assert {"digits", "text", "rollback", "native", "decisions"} <= set(ALL)
    for name in ALL:
        assert (CORPUS / name / "run.db").stat().st_size < 1_000_000
        started = _started(CORPUS / name / "run.db")
        want = "native" if name == "native" else "portable"
        assert started["environment"]["numerics"] == want
        assert started["config"]["determinism"]["numerics"] == want


def test_the_native_run_replays_only_on_its_own_cpu(tmp_path: Path) -> None:
    db = CORPUS / "native" / "run.db"
    expected = json.loads((CORPUS / "native" / "expected.json").read_text())
    recorded_cpu = _started(db)["environment"]["cpu"]
    here = cpu_identity()
    same = all(recorded_cpu[k] == here[k] for k in ("vendor", "family", "model", "flags"))
    code, obj, err = esper("replay", db, env=clean_env(), cwd=tmp_path)
    assert obj is not None
    if same:
        assert code == 0, err
        want = expected["branches"]["main"]
        assert (obj["head_seq"], obj["fingerprint"]) == (want["head_seq"], want["fingerprint"])
    else:
        assert code == 4, err
        assert obj["error"] == "EnvironmentMismatch" and "cpu." in obj["message"]
        assert "step" not in obj


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


@pytest.mark.parametrize("name", ["digits", "decisions", "learned"])
def test_recomputing_the_decisions_gives_the_recorded_run(name: str) -> None:
    # The controller and driver run live again and every event is matched against the log;
    # in `decisions` two of them came from user code in other threads (the seed call shape),
    # which is not there to run again: they are re-submitted from the log.
    db = CORPUS / name / "run.db"
    want = json.loads((CORPUS / name / "expected.json").read_text())["branches"]["main"]
    with RunDatabase.open(db, readonly=True) as rdb:
        sources = [r.payload["source"] for r in rdb.read(types=["AdaptationDecided"])]
    assert ("user" in sources) == (name == "decisions")
    result = replay(db, recompute_decisions=True)
    assert (result.head_seq, result.fingerprint) == (want["head_seq"], want["fingerprint"])


def test_the_learned_run_decided_from_a_posterior_its_log_holds() -> None:
    # Its library was a temporary file, long gone: the recomputation above drew from the
    # recorded posterior, fitted on the warm-up runs' outcomes.
    db = CORPUS / "learned" / "run.db"
    with RunDatabase.open(db, readonly=True) as rdb:
        (fitted,) = [r.payload for r in rdb.read(types=["PolicyFitted"])]
        sampled = list(rdb.read(types=["PolicySampled"]))
    assert fitted["posterior"]["n"] > 0
    assert not Path(fitted["library"]).exists()
    assert sampled
