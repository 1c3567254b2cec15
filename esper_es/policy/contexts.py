"""Germination contexts: what the learned controller learns from, kept in the shared library.

The library's `kernel_outcomes` say what each kernel did, not in which situation, nor by which
strategy, it was germinated. So when a run with a library projects a `SeedGerminated` that a
decision of the same boundary caused, it also records one row in the library's
`germination_contexts` table: `(run_id, branch, seed, kernel_id)` (the key of the kernel's
outcome row), the layer, the decision's strategy, and the layer's context
(`esper_es.policy.features.context_of` of the decision's recorded telemetry, as canonical
JSON). Any controller's runs record it, so heuristic runs warm the library for the learned
controller too. Rows are `INSERT OR IGNORE`, as the outcomes are.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any, Final

import attrs

from esper_es.core import events as ev
from esper_es.core.canonical import canonical_json
from esper_es.library.database import LibraryDatabase
from esper_es.policy.features import context_of

_TABLE: Final = """CREATE TABLE IF NOT EXISTS germination_contexts (
    run_id TEXT NOT NULL, branch TEXT NOT NULL, seed TEXT NOT NULL, kernel_id TEXT NOT NULL,
    layer TEXT NOT NULL, strategy TEXT NOT NULL, step INTEGER NOT NULL, context TEXT NOT NULL,
    PRIMARY KEY (run_id, branch, seed, kernel_id))"""


@attrs.frozen
class ContextRow:
    """The situation one kernel was germinated in (module docstring)."""

    run_id: str
    branch: str
    seed: str
    kernel_id: str
    layer: str
    strategy: str
    step: int
    context: str
    """`context_of(...)` as canonical JSON."""

    def values(self) -> dict[str, float]:
        """The context as a dict."""
        return {str(k): float(v) for k, v in json.loads(self.context).items()}


def record_context(library: LibraryDatabase, row: ContextRow) -> None:
    """Record `row` once (creating the table in a library from before it existed)."""
    with library._lock:
        library.conn.execute("BEGIN IMMEDIATE")
        try:
            library.conn.execute(_TABLE)
            library.conn.execute(
                "INSERT OR IGNORE INTO germination_contexts VALUES (?,?,?,?,?,?,?,?)",
                attrs.astuple(row),
            )
        except BaseException:
            library.conn.execute("ROLLBACK")
            raise
        library.conn.execute("COMMIT")


def contexts(library: LibraryDatabase) -> list[ContextRow]:
    """Every recorded context, in a stable order (none in a library without the table)."""
    try:
        rows = library.conn.execute(
            "SELECT * FROM germination_contexts ORDER BY run_id, branch, seed, kernel_id"
        ).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    return [ContextRow(*r) for r in rows]


class ContextRecorder:
    """Pairs each `SeedGerminated` with the decision of its boundary and records the context."""

    def __init__(self, library: LibraryDatabase, run_id: str, branch: Callable[[], str]) -> None:
        self.library = library
        self.run_id = run_id
        self.branch = branch
        #: Layer -> the last `AdaptationDecided` projected for it.
        self.decided: dict[str, ev.AdaptationDecided] = {}

    def seen(self, event: ev.Event) -> None:
        """Note a decision; record the context of a germination its decision caused."""
        if isinstance(event, ev.AdaptationDecided):
            self.decided[event.layer] = event
            return
        if not isinstance(event, ev.SeedGerminated):
            return
        decision = self.decided.get(event.layer)
        if decision is None or decision.step != event.step:
            return  # germinated by no decision of this boundary (nothing to learn its context)
        telemetry: dict[str, Any] = dict(decision.telemetry)
        record_context(
            self.library,
            ContextRow(
                run_id=self.run_id,
                branch=self.branch(),
                seed=event.seed,
                kernel_id=event.kernel_id,
                layer=event.layer,
                strategy=decision.strategy,
                step=event.step,
                context=canonical_json(context_of(telemetry, event.layer)),
            ),
        )
