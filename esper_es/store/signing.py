"""Signed runs: Ed25519 signatures over the chain head, and checking them (`sign`,
`verify --key`, `verify --expect-head`).

The hash chain proves the log is internally consistent, but anyone with write access can
recompute it from the documented recipe. A signature binds one point of the chain to a key:
it signs `SIGNED_DOMAIN ‖ canonical JSON {"hash", "run_id", "seq"}` of the event at the head
when `sign` ran. A rewritten chain has another hash at that seq, and without the private key
no one can make a signature that matches it.

Where signatures live: a `signatures` table, one row per (key, signed seq), not an event.
A signature is a statement *about* the log, not a fact of the run: appended as an event it
would itself move the head it signs (so no signed log could ever end signed), and replay,
resume and rollback would have to learn to skip it. It needs no chain: each row
authenticates itself against the public key the verifier brings, and deleting rows is caught
because `verify --key` requires a signature by that key covering the head (or, with
`allow_unsigned_tail`, at least one valid signature, reporting how many events follow it).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from esper_es.core.canonical import canonical_json
from esper_es.errors import TamperDetected
from esper_es.store.backends import open_store
from esper_es.store.keys import key_id, raw_public
from esper_es.store.protocol import RunStore
from esper_es.store.records import now_iso
from esper_es.store.side_tables import SIGNATURES_TABLE
from esper_es.store.sqlite_files import sqlite_failure
from esper_es.store.verify import verify

SIGNED_DOMAIN = b"esper-es chain head signature v1\n"


def signed_message(run_id: str, seq: int, head_hash: str) -> bytes:
    """The bytes a signature over the chain at `seq` signs."""
    body = canonical_json({"hash": head_hash, "run_id": run_id, "seq": seq})
    return SIGNED_DOMAIN + body.encode("utf-8")


@attrs.frozen
class SignReport:
    """What `sign` recorded."""

    run_id: str
    branch: str
    head_seq: int
    head_hash: str
    key_id: str
    signature: str
    signed_at: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return attrs.asdict(self)


@attrs.frozen
class SignatureCheck:
    """A passed `verify --key`: the newest seq signed by the key, and what follows it."""

    key_id: str
    signatures: int
    signed_seq: int
    signed_hash: str
    unsigned_after: int
    other_keys: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return attrs.asdict(self)


def sign(path: str | os.PathLike[str], key: Ed25519PrivateKey) -> SignReport:
    """Verify the run database in full, then record a signature of its head with `key`.

    Holds the writer lock throughout (DatabaseLocked, exit 5, if a writer is live), so the
    head signed is the head verified. A log that fails `verify` is never signed.
    """
    with open_store(path, audit=False) as db:
        report = verify(path)
        seq, head_hash = db.head()
        if (seq, head_hash) != (report.head_seq, report.head_hash):  # pragma: no cover
            raise TamperDetected(seq, "the head changed while it was verified")
        if seq == 0:
            raise TamperDetected(None, "the run database holds no event to sign")
        public = key.public_key()
        kid = key_id(public)
        if _signature_rows(db, kid)[0]:
            # This key's earlier signatures must still hold: signing again must never bless
            # a history rewritten since.
            check_signatures(path, public, head_seq=seq, allow_unsigned_tail=True)
        signature = key.sign(signed_message(db.run_id, seq, head_hash)).hex()
        signed_at = now_iso()
        try:
            db.sql.execute(SIGNATURES_TABLE)
            db.sql.execute(
                "INSERT INTO signatures (key_id, seq, head_hash, public_key, signature, "
                "signed_at) VALUES (?,?,?,?,?,?) ON CONFLICT (key_id, seq) DO UPDATE SET "
                "head_hash=excluded.head_hash, public_key=excluded.public_key, "
                "signature=excluded.signature, signed_at=excluded.signed_at",
                (kid, seq, head_hash, raw_public(public).hex(), signature, signed_at),
            )
        except sqlite3.DatabaseError as exc:
            raise sqlite_failure(Path(db.location), exc) from None
        head_row = db.event_at(seq)
        assert head_row is not None
        branch = str(head_row[3])
        return SignReport(db.run_id, branch, seq, head_hash, kid, signature, signed_at)


def check_signatures(
    path: str | os.PathLike[str],
    public: Ed25519PublicKey,
    *,
    head_seq: int,
    allow_unsigned_tail: bool = False,
) -> SignatureCheck:
    """Check every signature made with `public` against the chain (already verified up to
    `head_seq`); TamperDetected naming the seq unless one covers the head (module doc)."""
    kid = key_id(public)
    with open_store(path, readonly=True) as db:
        try:
            rows, others = _signature_rows(db, kid)
            hashes = {}
            for seq, _, _ in rows:
                found = db.event_at(seq)
                if found is not None:
                    hashes[seq] = found[-1]
        except sqlite3.DatabaseError as exc:
            raise sqlite_failure(Path(db.location), exc) from None
        run_id = db.run_id
    if not rows:
        raise TamperDetected(
            None,
            f"no signature by key {kid} in this run database "
            f"({others} by other keys); it was never signed with it, or its signatures "
            "were removed",
        )
    for seq, signed_hash, signature in rows:
        try:
            public.verify(bytes.fromhex(signature), signed_message(run_id, seq, signed_hash))
        except (InvalidSignature, ValueError):
            raise TamperDetected(
                seq, f"the signature by key {kid} over seq {seq} does not verify (altered)"
            ) from None
        if seq > head_seq:
            raise TamperDetected(
                head_seq + 1,
                f"key {kid} signed the chain up to seq {seq} but the database ends at seq "
                f"{head_seq}: events were removed from the end",
            )
        if hashes.get(seq) != signed_hash:
            raise TamperDetected(
                seq,
                f"the chain at seq {seq} is not the one key {kid} signed: its hash is "
                f"{hashes.get(seq)}, the signed hash {signed_hash} (history was rewritten)",
            )
    signed_seq, signed_hash, _ = max(rows)
    unsigned = head_seq - signed_seq
    if unsigned and not allow_unsigned_tail:
        raise TamperDetected(
            signed_seq + 1,
            f"signed by key {kid} up to seq {signed_seq}; the {unsigned} event(s) after it "
            "are not signed (sign the run again, or pass --allow-unsigned-tail)",
        )
    return SignatureCheck(kid, len(rows), signed_seq, signed_hash, unsigned, others)


def _signature_rows(db: RunStore, kid: str) -> tuple[list[tuple[int, str, str]], int]:
    if not db.sql.has_table("signatures"):
        return [], 0
    rows = [
        (int(seq), str(h), str(sig))
        for seq, h, sig in db.sql.query(
            "SELECT seq, head_hash, signature FROM signatures WHERE key_id=? ORDER BY seq", (kid,)
        )
    ]
    others = db.sql.query("SELECT COUNT(DISTINCT key_id) FROM signatures WHERE key_id<>?", (kid,))
    return rows, int(others[0][0])


def check_expected_head(
    path: str | os.PathLike[str], expected: str, *, head_seq: int, head_hash: str
) -> None:
    """TamperDetected unless the verified head's hash is `expected` (hex, `sha256:` allowed)."""
    want = expected.removeprefix("sha256:").lower()
    if want == head_hash:
        return
    with open_store(path, readonly=True) as db:
        try:
            found = db.seq_of_hash(want)
        except sqlite3.DatabaseError as exc:
            raise sqlite_failure(Path(db.location), exc) from None
    if found is not None:
        seq = found
        raise TamperDetected(
            seq + 1,
            f"the expected head is seq {seq}, but {head_seq - seq} event(s) follow it "
            f"(head seq {head_seq}, hash {head_hash})",
        )
    raise TamperDetected(
        None,
        f"no event has the expected head hash {want}: the chain was rewritten or is another "
        f"run's (head seq {head_seq}, hash {head_hash})",
    )
