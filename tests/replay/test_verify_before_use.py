"""Verify before use (SPEC §6): a tampered log stops replay, resume and rollback with exit 3.

Each tampering is done as an attacker would, on a copy of a stopped run: the append-only
triggers dropped and re-created around the change. Every command must refuse before its
first training step and append nothing (the file's event count, head hash and branches are
unchanged).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from replay_support import copy_db, rewrite_payload

from esper_es.cli.main import main
from esper_es.config import RunConfig
from esper_es.core.canonical import canonical_bytes
from esper_es.replay.log import RecordedLog
from esper_es.replay.rollback import boundary_ends
from esper_es.store.database import TRIGGERS, RunDatabase
from esper_es.trainer import Trainer, built_in_trainer

STOP = 13


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick run stopped (Ctrl-C) at step 13: snapshots at step 8 and at the stop."""
    import tomllib

    from replay_support import QUICK

    from esper_es.config import config_from_dict

    config: RunConfig = config_from_dict(tomllib.loads(QUICK))
    path = tmp_path_factory.mktemp("tamper") / "run.db"

    def stop(trainer: Trainer, step: int) -> None:
        if step == STOP:
            raise KeyboardInterrupt

    built_in_trainer(config, seed=0, db_path=path, on_step=stop).run()
    return path


class _Attack:
    """A connection with the append-only triggers dropped, re-created on exit."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)

    def __enter__(self) -> sqlite3.Connection:
        self.sql = [
            r[0]
            for r in self.conn.execute(
                "SELECT sql FROM sqlite_master WHERE type='trigger' AND name IN"
                f" ({','.join('?' * len(TRIGGERS))})",
                TRIGGERS,
            )
        ]
        for name in TRIGGERS:
            self.conn.execute(f"DROP TRIGGER IF EXISTS {name}")
        return self.conn

    def __exit__(self, *exc: object) -> None:
        for sql in self.sql:
            self.conn.execute(sql)
        self.conn.close()


def _snapshots(path: Path) -> list[tuple[int, str]]:
    with RunDatabase.open(path, readonly=True) as db:
        return [(r.seq, r.payload["snapshot"]) for r in db.read(types=["Checkpointed"])
                if r.payload["snapshot"]]  # fmt: skip


def _weight_ref(conn: sqlite3.Connection, manifest_key: str) -> dict[str, Any]:
    def blob(key: str) -> Any:
        return json.loads(conn.execute("SELECT data FROM blobs WHERE key=?", (key,)).fetchone()[0])

    return dict(blob(blob(manifest_key)["state"])["model"]["head.weight"])


def _forged(data: bytes) -> bytes:
    weights = torch.frombuffer(bytearray(data), dtype=torch.float32).clone()
    weights[0] += 1.0
    return weights.numpy().tobytes()


def altered_payload(path: Path) -> None:
    with _Attack(path) as conn:
        row = conn.execute("SELECT seq, payload FROM events WHERE type='EpochCompleted'"
                           " ORDER BY seq DESC").fetchone()  # fmt: skip
        payload = json.loads(row[1])
        payload["train_loss"] = 0.001
        conn.execute("UPDATE events SET payload=? WHERE seq=?", (json.dumps(payload), row[0]))


def deleted_row(path: Path) -> None:
    with _Attack(path) as conn:
        conn.execute("DELETE FROM events WHERE seq=(SELECT MAX(seq) / 2 FROM events)")


def changed_hash(path: Path) -> None:
    with _Attack(path) as conn:
        conn.execute("UPDATE events SET hash=? WHERE seq=(SELECT MAX(seq) / 2 FROM events)",
                     ("f" * 64,))  # fmt: skip


def forged_blob(path: Path) -> None:
    """Every snapshot's `head.weight` bytes rewritten in place (the key no longer matches)."""
    with _Attack(path) as conn:
        for _, key in _snapshots(path):
            ref = _weight_ref(conn, key)
            data = conn.execute("SELECT data FROM blobs WHERE key=?", (ref["blob"],)).fetchone()[0]
            conn.execute("UPDATE blobs SET data=? WHERE key=?", (_forged(data), ref["blob"]))


def _put(conn: sqlite3.Connection, data: bytes) -> str:
    key = hashlib.sha256(data).hexdigest()
    conn.execute("INSERT OR IGNORE INTO blobs (key, size, data) VALUES (?,?,?)",
                 (key, len(data), data))  # fmt: skip
    return key


def _get(conn: sqlite3.Connection, key: str) -> bytes:
    return bytes(conn.execute("SELECT data FROM blobs WHERE key=?", (key,)).fetchone()[0])


def _pointing_at(key: str) -> Callable[[dict[str, Any]], None]:
    def change(payload: dict[str, Any]) -> None:
        payload["snapshot"] = key

    return change


def forged_snapshot(path: Path) -> None:
    """A consistent forgery: new blobs under their own keys, `Checkpointed.snapshot` pointed at
    them, the chain re-computed and the audit trail deleted; only the fingerprint tells."""
    for seq, key in _snapshots(path):
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            manifest = json.loads(_get(conn, key))
            state = json.loads(_get(conn, manifest["state"]))
            ref = state["model"]["head.weight"]
            ref["blob"] = _put(conn, _forged(_get(conn, ref["blob"])))
            manifest["state"] = _put(conn, canonical_bytes(state))
            new_key = _put(conn, canonical_bytes(manifest))
        finally:
            conn.close()
        rewrite_payload(path, seq, _pointing_at(new_key))
    for trail in path.parent.glob(path.name + ".audit*"):
        trail.unlink()


def _state(path: Path) -> tuple[int, str, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        count, head = conn.execute("SELECT COUNT(*), MAX(hash) FROM events").fetchone()
        last = conn.execute("SELECT hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()[0]
        branches = conn.execute("SELECT COUNT(*) FROM branches").fetchone()[0]
        return int(count), str(last or head), int(branches)
    finally:
        conn.close()


@pytest.fixture
def no_steps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts training steps taken in this process (there must be none)."""
    steps: list[int] = []
    original = Trainer._train_step

    def counted(self: Trainer, batch: Any) -> float:
        steps.append(self.step)
        return original(self, batch)

    monkeypatch.setattr(Trainer, "_train_step", counted)
    yield steps


TAMPERINGS: dict[str, Callable[[Path], None]] = {
    "altered payload": altered_payload,
    "deleted row": deleted_row,
    "changed hash": changed_hash,
    "forged blob": forged_blob,
    "forged snapshot": forged_snapshot,
}


@pytest.mark.parametrize("command", ["replay", "resume", "rollback"])
@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_a_tampered_log_is_refused_before_any_step(
    stopped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    no_steps: list[int], command: str, tampering: str,
) -> None:  # fmt: skip
    db = copy_db(stopped, tmp_path / "run.db")
    snapshots = _snapshots(db)
    with RunDatabase.open(db, readonly=True) as handle:
        ends = boundary_ends(RecordedLog(handle, "main"))
    # A rollback that restores the step-8 snapshot; a replay that restores the last one.
    inside = next(s for s in ends if snapshots[0][0] < s < snapshots[-1][0])
    TAMPERINGS[tampering](db)
    before = _state(db)
    args = {
        "replay": ["replay", str(db), "--to", str(snapshots[-1][0])],
        "resume": ["resume", str(db)],
        "rollback": ["rollback", str(db), "--to", str(inside)],
    }[command]
    capsys.readouterr()
    assert main([*args, "--json"]) == 3
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["exit_code"] == 3 and "verification failed" in out["message"]
    if tampering == "forged snapshot":
        assert "does not restore the state its Checkpointed recorded" in out["message"]
    assert no_steps == []
    assert _state(db) == before


@pytest.mark.parametrize("tampering", ["altered payload", "deleted row", "changed hash",
                                       "forged blob"])  # fmt: skip
def test_a_whole_replay_refuses_a_tampered_log(
    stopped: Path, tmp_path: Path, no_steps: list[int], tampering: str
) -> None:
    """Without `--to` nothing is restored; the chain and blob checks still stop it."""
    db = copy_db(stopped, tmp_path / "run.db")
    TAMPERINGS[tampering](db)
    assert main(["replay", str(db)]) == 3
    assert no_steps == []


def test_an_untampered_copy_passes(stopped: Path, tmp_path: Path) -> None:
    """The control: the same commands on the untouched copy succeed."""
    db = copy_db(stopped, tmp_path / "run.db")
    assert main(["replay", str(db), "--to", str(_snapshots(db)[-1][0])]) == 0
    assert main(["resume", str(db), "--epochs", "2"]) == 0
