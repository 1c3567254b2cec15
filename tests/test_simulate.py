"""`esper-es simulate` then `esper-es verify`: the headline check, and realistic traffic."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from esper_es.errors import EXIT_OK
from esper_es.simulate import simulate
from esper_es.store.verify import verify

LIFECYCLE_EVENTS = (
    "SeedGerminated",
    "SeedTrainingStarted",
    "SeedCancelled",
    "SeedGraftingStarted",
    "SeedStabilized",
    "SeedEvaluationStarted",
    "SeedFineTuningStarted",
    "SeedFossilized",
    "SeedCulled",
    "SeedRolledBack",
    "SeedEmbargoed",
    "SeedReleased",
)


def esper(*args: object) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter, as the shell would."""
    return subprocess.run(
        [sys.executable, "-m", "esper_es.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def simulate_then_verify(db: Path, events: int) -> dict[str, int]:
    """The headline check; returns the count of each event type in the log."""
    sim = esper("simulate", "--db", db, "--events", events, "--json")
    assert sim.returncode == EXIT_OK, sim.stderr
    report = json.loads(sim.stdout)
    assert report["events"] >= events
    check = esper("verify", db, "--json")
    assert check.returncode == EXIT_OK, check.stdout + check.stderr
    verified = json.loads(check.stdout)
    assert verified["ok"] is True
    assert verified["head_seq"] == report["head_seq"]
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    counts = dict(conn.execute("SELECT type, COUNT(*) FROM events GROUP BY type").fetchall())
    conn.close()
    assert sum(counts.values()) == report["events"]
    return counts


@pytest.fixture(scope="module")
def ten_thousand(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Event counts of a 10 000-event simulation that verified."""
    return simulate_then_verify(tmp_path_factory.mktemp("sim") / "x.db", 10_000)


def test_simulate_10k_then_verify(ten_thousand: dict[str, int]) -> None:
    assert sum(ten_thousand.values()) >= 10_000


def test_traffic_is_realistic(ten_thousand: dict[str, int]) -> None:
    for name in (*LIFECYCLE_EVENTS, "BlendAdjusted", "CommandRefused"):
        assert ten_thousand.get(name, 0) > 0, name
    # Slots churn: culled, cancelled or rolled-back seeds are embargoed, then released.
    assert ten_thousand["SeedEmbargoed"] >= ten_thousand["SeedReleased"] > 10
    assert ten_thousand["SeedCulled"] > 10
    assert ten_thousand["RunStarted"] == 1
    assert ten_thousand["SeedLayerRegistered"] == 8


@pytest.mark.slow
def test_simulate_100k_then_verify(tmp_path: Path) -> None:
    counts = simulate_then_verify(tmp_path / "x.db", 100_000)
    for name in (*LIFECYCLE_EVENTS, "BlendAdjusted", "CommandRefused"):
        assert counts.get(name, 0) > 0, name


def test_ctrl_c_at_a_step_boundary_leaves_a_verifiable_run(tmp_path: Path) -> None:
    db = tmp_path / "int.db"
    heads: dict[int, int] = {}

    def ctrl_c(step: int, head: int) -> None:
        heads[step] = head
        if step == 50:
            raise KeyboardInterrupt

    # on_step runs after the step's commit (the CLI's progress display): Ctrl-C there too
    # stops the run cleanly and is reported, not raised.
    result = simulate(db, events=1_000_000, on_step=ctrl_c)
    assert result.interrupted is True
    assert result.steps == 50
    assert max(heads) == 50
    assert result.events == heads[50]
    report = verify(db)
    assert report.head_seq == result.events


def test_ctrl_c_inside_a_step_is_reported_as_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from esper_es.command_bus import CommandBus

    db = tmp_path / "int.db"
    real = CommandBus.execute_all
    calls = [0]

    def interrupted_at_step_50(self: CommandBus, commands):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 51:  # the setup batch, then steps 1..49 commit
            raise KeyboardInterrupt
        return real(self, commands)

    monkeypatch.setattr(CommandBus, "execute_all", interrupted_at_step_50)
    result = simulate(db, events=1_000_000)
    monkeypatch.undo()
    assert result.interrupted is True
    assert result.steps == 50
    report = verify(db)
    assert report.head_seq == result.events > 0


def test_a_sigint_landing_inside_a_lifecycle_trigger_still_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `transitions` swallows whatever is raised while it finishes a trigger (it catches
    # BaseException around its finalize step); a Ctrl-C landing there was lost and the run
    # went on to its last event. Deliver a real SIGINT at exactly that point.
    import os
    import signal

    import transitions.core

    real_debug = transitions.core._LOGGER.debug
    calls = [0]

    def debug(msg: str, *args: object) -> None:
        calls[0] += 1
        if calls[0] == 200 and "finalize" in msg:
            os.kill(os.getpid(), signal.SIGINT)
        real_debug(msg, *args)

    monkeypatch.setattr(transitions.core._LOGGER, "debug", debug)
    # 200th debug call: well inside the run, far from its end.
    result = simulate(tmp_path / "sig.db", events=200_000)
    assert result.interrupted is True and result.events < 200_000
    assert verify(tmp_path / "sig.db").head_seq == result.events
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
