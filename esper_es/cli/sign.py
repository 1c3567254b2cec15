"""`esper-es sign`, `esper-es keygen` and the signature options of `esper-es verify`.

    esper-es keygen --out signer.pem        # signer.pem (private, 0600) + signer.pem.pub
    esper-es sign run.db --key signer.pem   # verify in full, then sign the chain head
    esper-es verify run.db --key signer.pem.pub [--allow-unsigned-tail]
    esper-es verify run.db --expect-head <hash printed by sign or verify>

Exit codes: a bad key file or option 2, a signature or head that does not match 3 (naming
the seq), a live writer during `sign` 5.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from esper_es.errors import EXIT_OK, EXIT_USAGE, EsperError
from esper_es.store.pg_location import describe as describe_location

_HASH = re.compile(r"^(sha256:)?[0-9a-fA-F]{64}$")


class SignOptionError(EsperError):
    """A signature option of `verify` is malformed or out of place."""

    exit_code = EXIT_USAGE


def check_verified(args: argparse.Namespace, head_seq: int, head_hash: str) -> dict[str, Any]:
    """After `verify` passed: the `--expect-head` and `--key` checks; their JSON fields."""
    out: dict[str, Any] = {}
    if args.expect_head is None and args.key is None:
        if args.allow_unsigned_tail:
            raise SignOptionError("--allow-unsigned-tail goes with --key")
        return out  # a plain verify needs no cryptography (nor its import time)
    from esper_es.store import signing

    if args.expect_head is not None:
        if not _HASH.match(args.expect_head):
            raise SignOptionError(
                f"--expect-head wants the 64 hex digits of a head hash, got {args.expect_head!r}"
            )
        signing.check_expected_head(
            args.db, args.expect_head, head_seq=head_seq, head_hash=head_hash
        )
        out["expected_head"] = True
    if args.key is not None:
        from esper_es.store.keys import load_public_key

        check = signing.check_signatures(
            args.db,
            load_public_key(args.key),
            head_seq=head_seq,
            allow_unsigned_tail=args.allow_unsigned_tail,
        )
        out["signature"] = check.as_dict()
    elif args.allow_unsigned_tail:
        raise SignOptionError("--allow-unsigned-tail goes with --key")
    return out


def describe(extra: dict[str, Any]) -> str:
    """The human line for what `check_verified` checked ('' if nothing)."""
    parts = []
    if extra.get("expected_head"):
        parts.append("head is the expected one")
    sig = extra.get("signature")
    if sig:
        tail = (
            f"; {sig['unsigned_after']} event(s) after it NOT signed"
            if sig["unsigned_after"]
            else " (the head)"
        )
        parts.append(f"signed by {sig['key_id'][:24]}… up to seq {sig['signed_seq']}{tail}")
    return "; ".join(parts)


def cmd_sign(args: argparse.Namespace) -> int:
    """Verify, then sign the chain head."""
    from esper_es.store.keys import load_private_key
    from esper_es.store.signing import sign

    key = load_private_key(args.key)  # a bad key file fails before the database is opened
    report = sign(args.db, key)
    obj = {"ok": True, "fingerprint": None, **report.as_dict()}
    _emit(
        args,
        obj,
        f"SIGNED  {describe_location(args.db)}: seq {report.head_seq} hash {report.head_hash} "
        f"by {report.key_id}",
    )
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write a new key pair."""
    from esper_es.store.keys import generate_keypair

    private, public, kid = generate_keypair(args.out, force=args.force)
    obj = {"ok": True, "private_key": str(private), "public_key": str(public), "key_id": kid}
    _emit(
        args,
        obj,
        f"wrote {private} (private: keep it secret) and {public} (public: give it to "
        f"verifiers); key id {kid}",
    )
    return EXIT_OK


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    if args.json:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    else:
        print(text)
