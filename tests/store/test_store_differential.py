"""Both backends, driven by the same random operations, answer alike and store the same rows.

Appends with right and stale versions, retries of stored events, ids reused for other
events, and branches: whatever SQLite answers (a result or a typed error), PostgreSQL
answers the same, and with the clock pinned the two logs are equal row for row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_kits import PostgresKit, SqliteKit

from esper_es.core import events as ev
from esper_es.core.envelope import NewEvent
from esper_es.errors import EsperError
from esper_es.store.protocol import RunStore

SEEDS = ("l/0", "l/1", "l/2")

#: (seed index, version offset from the true one, reuse an earlier event id?)
op = st.tuples(st.integers(0, 2), st.sampled_from([0, 0, 0, -1, 1]), st.booleans())


def _apply(db: RunStore, ops: list[tuple[int, int, bool]], fork_at: int | None) -> list[Any]:
    answers: list[Any] = []
    ids: list[tuple[NewEvent, str]] = []
    branch = "main"
    for i, (seed, offset, reuse) in enumerate(ops):
        if fork_at is not None and i == fork_at and db.head()[0] > 0:
            db.open_branch("b1", "main", db.head()[0] - 1)
            branch = "b1"
        stream = f"seed:{SEEDS[seed]}"
        if reuse and ids:
            ne, stream = ids[i % len(ids)]
        else:
            event = ev.BlendAdjusted(seed=SEEDS[seed], step=i, alpha=(i % 10) / 10)
            ne = NewEvent(event, f"cmd-{i}/0", f"cmd-{i}")
        expected = db.stream_version(stream, branch) + offset
        try:
            r = db.append(stream, expected, [ne], branch=branch)
            answers.append((r.seqs, r.version, r.acknowledged))
            ids.append((ne, stream))
        except EsperError as exc:
            answers.append(type(exc).__name__)
    return answers


@pytest.fixture(scope="module")
def pg_ready() -> None:
    """Skip (or fail in CI) without a test server."""
    from pg_support import server_url

    server_url()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(op, min_size=1, max_size=25), fork=st.none() | st.integers(1, 20))
def test_sqlite_and_postgres_answer_alike(
    pg_ready: None, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
    ops: list[tuple[int, int, bool]], fork: int | None,
) -> None:  # fmt: skip
    import esper_es.store.appending as appending

    # Both backends stamp `recorded_at` through `appending.plan_for`: one clock to fix.
    monkeypatch.setattr(appending, "now_iso", lambda: "2026-01-01T00:00:00.000000+00:00")
    outcomes = []
    for kit in (SqliteKit(Path(tmp_path_factory.mktemp("diff"))), PostgresKit()):
        with kit.create(kit.location(), "diff") as db:
            answers = _apply(db, ops, fork)
            outcomes.append((answers, list(db.rows()), db.branches()))
    assert outcomes[0] == outcomes[1]
