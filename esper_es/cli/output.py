"""What every command shares: its output (one JSON object with `--json`, text otherwise), its
one error line, its progress on stderr, and how it names a run's branch."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from esper_es.errors import UnknownBranch


def progress_for(args: argparse.Namespace) -> Any:
    """The command's progress on stderr (off with --json, whose stdout is one object)."""
    from esper_es.cli.feedback import Feedback

    return Feedback(args.command, enabled=not getattr(args, "json", False))


def emit(args: argparse.Namespace, obj: dict[str, Any], text: Callable[[], None]) -> None:
    """`obj` as the one JSON object on stdout with --json; otherwise `text()` prints."""
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
    else:
        text()


def run_fields(db: Any, branch: str, fingerprint: str | None = None) -> dict[str, Any]:
    """The fields every run command's JSON starts with."""
    return {
        "run_id": db.run_id,
        "branch": branch,
        "head_seq": db.head_seq(branch),
        "fingerprint": fingerprint,
    }


def branch_list(db: Any) -> list[dict[str, Any]]:
    """The run's branches as JSON: name, parent, fork seq."""
    return [{"name": b.name, "parent": b.parent, "fork_seq": b.fork_seq} for b in db.branches()]


def known_branch(db: Any, name: str | None) -> str:
    """`name`, checked; None means the newest branch, the default of every command."""
    if name is None:
        # The most recently opened branch, as `resume` continues (main without rollbacks).
        return str(db.branches()[-1].name)
    if name not in {b.name for b in db.branches()}:
        raise UnknownBranch(name, sorted(b.name for b in db.branches()))
    return name


def one_line(message: str) -> str:
    """`message` on one line: control characters (from a damaged file's bytes) escaped."""
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in message
    )


def fail(want_json: bool, kind: str, message: str, code: int, extra: dict[str, Any]) -> None:
    """The one error line on stderr (and the one JSON object on stdout with --json)."""
    message = one_line(message)
    print(f"esper-es: {message}", file=sys.stderr)
    if want_json:
        obj = {"error": kind, "message": message, "exit_code": code, **extra}
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
