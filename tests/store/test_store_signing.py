"""Signed runs (issue 10, item 9): `sign`, `verify --key`, `verify --expect-head`, `keygen`.

The attack the chain alone cannot stop: someone with write access but without the private key
rewrites history, recomputes the chain from the documented recipe and rewrites the audit trail
to match. Plain `verify` passes such a file; `verify --key` must not.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from esper_es.cli.main import main
from esper_es.core.canonical import canonical_json
from esper_es.errors import DatabaseLocked, KeyFileError, TamperDetected
from esper_es.store import RunDatabase, verify
from esper_es.store.chain import row_hash
from esper_es.store.database import TRIGGERS, audit_path
from esper_es.store.keys import generate_keypair, load_private_key, load_public_key
from esper_es.store.signing import check_signatures, sign

ROW_COLUMNS = (
    "seq, event_id, run_id, branch, stream, stream_version, type, schema_version,"
    " payload, causation_id, correlation_id, recorded_at, prev_hash"
)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """A key pair: (private, public)."""
    (tmp_path / "keys").mkdir()
    private, public, _ = generate_keypair(tmp_path / "keys" / "signer.pem")
    return private, public


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    """`esper-es ARGV --json`: exit code, the one JSON object on stdout, stderr."""
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 1, out
    return code, json.loads(lines[0]), err


def forge(path: Path, seq: int, change: Callable[[dict[str, Any]], None]) -> None:
    """An attacker without the key: change one payload, recompute the chain from it on by the
    documented recipe, and rewrite the audit trail's hashes to match. `verify` passes it."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        triggers = [r[0] for r in conn.execute("SELECT sql FROM sqlite_master WHERE type="
                                               "'trigger'")]  # fmt: skip
        conn.execute("BEGIN")
        for name in TRIGGERS:
            conn.execute(f"DROP TRIGGER IF EXISTS {name}")
        payload = json.loads(conn.execute("SELECT payload FROM events WHERE seq=?", (seq,))
                             .fetchone()[0])  # fmt: skip
        change(payload)
        conn.execute("UPDATE events SET payload=? WHERE seq=?", (canonical_json(payload), seq))
        rows = conn.execute(
            f"SELECT {ROW_COLUMNS} FROM events WHERE seq>=? ORDER BY seq", (seq,)
        ).fetchall()
        prev = rows[0][-1]
        hashes = {}
        for r in rows:
            prev = hashes[r[0]] = row_hash(prev, *r[:-1])
            conn.execute("UPDATE events SET prev_hash=?, hash=? WHERE seq=?",
                         (r[-1] if r[0] == seq else hashes.get(r[0] - 1), prev, r[0]))  # fmt: skip
        for sql in triggers:
            conn.execute(sql)
        conn.execute("COMMIT")
    finally:
        conn.close()
    trail = audit_path(path)
    lines = []
    for line in trail.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        rec["hash"] = hashes.get(rec["seq"], rec["hash"])
        lines.append(canonical_json(rec))
    trail.write_text("\n".join(lines) + "\n", encoding="utf-8")


def reason(text: str) -> Callable[[dict[str, Any]], None]:
    def change(payload: dict[str, Any]) -> None:
        payload["reason"] = text

    return change


def test_sign_then_verify_with_the_key_passes(
    history: Any, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = keys
    code, signed, _ = run(["sign", str(history.path), "--key", str(private)], capsys)
    assert code == 0 and signed["ok"] and signed["head_seq"] == history.length
    assert signed["run_id"] == history.run_id and signed["branch"] == "main"
    assert signed["key_id"].startswith("ed25519:") and len(signed["signature"]) == 128
    code, checked, _ = run(["verify", str(history.path), "--key", str(public)], capsys)
    assert code == 0 and checked["ok"] and checked["head_hash"] == signed["head_hash"]
    assert checked["signature"] == {
        "key_id": signed["key_id"], "signatures": 1, "signed_seq": history.length,
        "signed_hash": signed["head_hash"], "unsigned_after": 0, "other_keys": 0,
    }  # fmt: skip
    code, head, _ = run(
        ["verify", str(history.path), "--expect-head", "sha256:" + signed["head_hash"]], capsys
    )
    assert code == 0 and head["expected_head"] is True
    # Signing touches nothing the chain covers, and writes no file but the database.
    assert verify(history.path).head_hash == signed["head_hash"]
    left = {p.name for p in history.path.parent.iterdir()} - {"run.db-wal", "run.db-shm"}
    assert left == {"keys", "run.db", "run.db.audit.jsonl"}


def test_a_rewritten_chain_without_the_key_fails_verify_with_the_key(
    history: Any, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = keys
    sign(history.path, load_private_key(private))
    forge(history.path, history.seq["refused"], reason("never refused"))
    assert verify(history.path).head_seq == history.length  # what the chain alone allows
    code, out, err = run(["verify", str(history.path), "--key", str(public)], capsys)
    assert code == 3 and out["ok"] is False and out["first_bad_seq"] == history.length
    assert f"the chain at seq {history.length} is not the one key ed25519:" in out["reason"]
    assert err.count("\n") == 1 and "Traceback" not in err
    # The forger cannot re-point the signature at the new head either.
    conn = sqlite3.connect(history.path, isolation_level=None)
    conn.execute("UPDATE signatures SET head_hash=(SELECT hash FROM events ORDER BY seq DESC "
                 "LIMIT 1)")  # fmt: skip
    conn.close()
    with pytest.raises(TamperDetected, match="does not verify") as info:
        check_signatures(history.path, load_public_key(public), head_seq=history.length)
    assert info.value.seq == history.length
    # Nor remove the signatures: a key that signed nothing here fails too.
    conn = sqlite3.connect(history.path, isolation_level=None)
    conn.execute("DELETE FROM signatures")
    conn.close()
    code, out, _ = run(["verify", str(history.path), "--key", str(public)], capsys)
    assert code == 3 and "no signature by key" in out["reason"]
    # And re-signing with the key refuses to bless the rewrite while the old signature holds.


def test_signing_again_refuses_a_history_rewritten_since(
    history: Any, keys: tuple[Path, Path]
) -> None:
    key = load_private_key(keys[0])
    sign(history.path, key)
    forge(history.path, history.seq["s1_culled"], reason("rewritten"))
    with pytest.raises(TamperDetected, match="is not the one key"):
        sign(history.path, key)


def test_events_after_the_signed_head_are_unsigned(
    history: Any, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from esper_es.core import events as ev
    from esper_es.core.envelope import NewEvent

    private, public = keys
    sign(history.path, load_private_key(private))
    with RunDatabase.open(history.path) as db:
        db.append("seed:layer1/0", 6, [NewEvent(ev.BlendAdjusted(seed="layer1/0", step=50,
                                                                 alpha=0.5), "late")])  # fmt: skip
    code, out, _ = run(["verify", str(history.path), "--key", str(public)], capsys)
    assert code == 3 and out["first_bad_seq"] == history.length + 1
    assert f"up to seq {history.length}; the 1 event(s) after it are not signed" in out["reason"]
    code, out, _ = run(
        ["verify", str(history.path), "--key", str(public), "--allow-unsigned-tail"], capsys
    )
    assert code == 0 and out["signature"]["unsigned_after"] == 1
    code, signed, _ = run(["sign", str(history.path), "--key", str(private)], capsys)
    code, out, _ = run(["verify", str(history.path), "--key", str(public)], capsys)
    assert code == 0 and out["signature"]["signatures"] == 2
    assert out["signature"]["signed_seq"] == signed["head_seq"] == history.length + 1


def test_a_cut_tail_below_the_signed_seq_is_caught(history: Any, keys: tuple[Path, Path]) -> None:
    sign(history.path, load_private_key(keys[0]))
    with pytest.raises(TamperDetected, match="events were removed from the end") as info:
        check_signatures(history.path, load_public_key(keys[1]), head_seq=history.length - 2)
    assert info.value.seq == history.length - 1


def test_the_wrong_public_key_fails(
    history: Any, keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sign(history.path, load_private_key(keys[0]))
    _, other, _ = generate_keypair(tmp_path / "other.pem")
    code, out, _ = run(["verify", str(history.path), "--key", str(other)], capsys)
    assert (
        code == 3
        and "no signature by key" in out["reason"]
        and "(1 by other keys)" in (out["reason"])
    )


def test_expect_head_with_another_hash_fails(
    history: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["verify", str(history.path), "--expect-head", "ab" * 32], capsys)
    assert code == 3 and "no event has the expected head hash" in out["reason"]
    earlier = row_hashes(history.path)[history.length - 3]
    code, out, _ = run(["verify", str(history.path), "--expect-head", earlier], capsys)
    assert code == 3 and out["first_bad_seq"] == history.length - 2
    assert "3 event(s) follow it" in out["reason"]
    code, out, _ = run(["verify", str(history.path), "--expect-head", "xyz"], capsys)
    assert code == 2 and out["error"] == "SignOptionError"


def row_hashes(path: Path) -> dict[int, str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT seq, hash FROM events"))
    finally:
        conn.close()


def test_signing_takes_the_writer_lock(history: Any, keys: tuple[Path, Path]) -> None:
    with RunDatabase.open(history.path), pytest.raises(DatabaseLocked) as info:
        sign(history.path, load_private_key(keys[0]))
    assert info.value.exit_code == 5
    assert main(["verify", str(history.path), "--key", str(keys[1])]) == 3  # nothing signed


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such file"),
        (b"hello", "not a PEM private key"),
        (b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n", "public"),
    ],
)
def test_a_bad_key_file_exits_2_before_the_database_is_touched(
    history: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: Any, problem: str
) -> None:
    key = tmp_path / "bad.pem"
    if content is not None:
        key.write_bytes(content)
    before = history.path.read_bytes()
    code, out, err = run(["sign", str(history.path), "--key", str(key)], capsys)
    assert code == 2 and out["error"] == "KeyFileError" and problem in out["message"]
    assert history.path.read_bytes() == before and err.count("\n") == 1
    code, out, _ = run(["verify", str(history.path), "--key", str(key)], capsys)
    assert code == 2 and out["error"] == "KeyFileError"


def test_keygen_writes_a_private_key_only_its_owner_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_path = tmp_path / "k.pem"
    code, out, _ = run(["keygen", "--out", str(out_path)], capsys)
    assert code == 0 and out["public_key"] == str(out_path) + ".pub"
    assert os.stat(out_path).st_mode & 0o777 == 0o600
    assert load_private_key(out_path).public_key() == load_public_key(out["public_key"])
    code, again, _ = run(["keygen", "--out", str(out_path)], capsys)
    assert code == 2 and "already exists" in again["message"]
    code, forced, _ = run(["keygen", "--out", str(out_path), "--force"], capsys)
    assert code == 0 and forced["key_id"] != out["key_id"]
    with pytest.raises(KeyFileError, match="private key"):
        load_public_key(out_path)


def test_keygen_into_a_place_it_cannot_write_is_a_storage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["keygen", "--out", str(tmp_path / "missing" / "k.pem")], capsys)
    assert code == 1 and out["error"] == "StorageError" and "cannot write the key" in err
    assert not (tmp_path / "missing").exists()
