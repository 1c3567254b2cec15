"""Typed errors of replay, rollback and resume (exit codes per SPEC §8)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from esper_es.errors import EXIT_USAGE, EXIT_VERIFY, EsperError


class Divergence(EsperError):
    """A re-executed run differs from its log: names the seq, the step and what differs."""

    exit_code = EXIT_VERIFY

    def __init__(
        self,
        seq: int,
        step: int,
        what: str,
        *,
        tensors: Sequence[str] = (),
        recorded: Any = None,
        recomputed: Any = None,
    ) -> None:
        self.seq = seq
        self.step = step
        self.what = what
        self.tensors = tuple(tensors)
        self.recorded = recorded
        self.recomputed = recomputed
        detail = f"; tensors that differ: {', '.join(self.tensors)}" if self.tensors else ""
        super().__init__(f"replay diverged at seq {seq} (step {step}): {what}{detail}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (what `replay --json` prints on a divergence)."""
        return {
            "diverged": True,
            "seq": self.seq,
            "step": self.step,
            "what": self.what,
            "tensors": list(self.tensors),
            "recorded": self.recorded,
            "recomputed": self.recomputed,
        }


class InvalidRollbackPoint(EsperError):
    """A rollback target inside a step boundary's transaction, or outside the branch."""

    exit_code = EXIT_USAGE


class NotReplayable(EsperError):
    """The log cannot be re-executed as asked (no RunStarted, nothing to resume, …)."""

    exit_code = EXIT_USAGE


class NotAModelFile(EsperError):
    """A file given as a `replay --out` model file is not one (never unpickled: SPEC §9)."""

    exit_code = EXIT_USAGE

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path} is not an esper-es model file: {reason}")
