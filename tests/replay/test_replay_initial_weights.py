"""Initial weights in the log (SPEC §5): checked before use; logs without them replay as before."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from replay_support import rewrite_payload

from esper_es.config import RunConfig
from esper_es.core.canonical import canonical_json
from esper_es.errors import EXIT_VERIFY
from esper_es.replay import replay
from esper_es.store.database import RunDatabase, audit_path
from esper_es.trainer import built_in

REPO = Path(__file__).resolve().parents[2]


def esper(*argv: object) -> subprocess.CompletedProcess[str]:
    """`esper-es ARGS` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "esper_es.cli.main", *map(str, argv)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def as_run_started_v1(path: Path) -> None:
    """Rewrite seq 1 into a RunStarted v1 (no host, no initial weights), re-chained."""

    def strip(payload: dict[str, Any]) -> None:
        del payload["host"], payload["initial_weights"]

    rewrite_payload(path, 1, strip, schema_version=1)


def rechain_audit(path: Path) -> None:
    """Bring the audit trail's hashes in line with the rewritten log (a consistent forgery,
    or an old run's own trail)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        hashes = dict(conn.execute("SELECT seq, hash FROM events").fetchall())
    finally:
        conn.close()
    trail = audit_path(path)
    lines = []
    for line in trail.read_text("utf-8").splitlines():
        rec = json.loads(line)
        rec["hash"] = hashes[int(rec["seq"])]
        lines.append(canonical_json(rec))
    trail.write_text("\n".join(lines) + "\n", "utf-8")


def test_built_in_run_records_its_host_and_initial_weights(
    tmp_path: Path, quick: RunConfig
) -> None:
    db = tmp_path / "run.db"
    result = built_in(quick, seed=0, db_path=db)
    with RunDatabase.open(db, readonly=True) as rdb:
        (rec,) = rdb.read(types=["RunStarted"])
        assert rec.schema_version == 3
        assert (rec.event.world_size, rec.event.backend) == (1, None)
        assert rec.event.host == {"kind": "built_in", "task": "digits"}
        assert rdb.has_blob(rec.event.initial_weights["snapshot"])
    assert replay(db).fingerprint == result.fingerprint
    assert replay(db, recompute_decisions=True).fingerprint == result.fingerprint


def test_a_log_from_before_run_started_v2_replays_as_before(
    tmp_path: Path, quick: RunConfig
) -> None:
    db = tmp_path / "run.db"
    result = built_in(quick, seed=0, db_path=db)
    as_run_started_v1(db)
    rechain_audit(db)
    with RunDatabase.open(db, readonly=True) as rdb:
        (rec,) = rdb.read(types=["RunStarted"])
        assert rec.schema_version == 1 and rec.event.initial_weights is None  # upcast
    assert replay(db).fingerprint == result.fingerprint
    assert replay(db, recompute_decisions=True).fingerprint == result.fingerprint


def test_forged_initial_weights_stop_replay_with_exit_3_before_any_step(
    tmp_path: Path, quick: RunConfig
) -> None:
    db = tmp_path / "run.db"
    built_in(quick, seed=0, db_path=db)
    rewrite_payload(db, 1, lambda p: p["initial_weights"].update(fingerprint="sha256:" + "0" * 64))
    rechain_audit(db)  # a forgery consistent with the chain and the audit trail
    with RunDatabase.open(db, readonly=True) as rdb:
        head = rdb.head_seq("main")
    proc = esper("replay", db)
    assert proc.returncode == EXIT_VERIFY, proc.stderr
    assert "initial weights" in proc.stderr
    proc = esper("resume", db, "--epochs", "4")
    assert proc.returncode == EXIT_VERIFY, proc.stderr
    with RunDatabase.open(db, readonly=True) as rdb:
        assert rdb.head_seq("main") == head  # nothing appended
