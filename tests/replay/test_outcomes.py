"""Decision outcomes (`DecisionOutcomeMeasured`): from the log, replayed and resumed alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from replay_support import row_hashes
from test_replay import Scripted, events, scripted_factory, stop_at

from esper_es.config import RunConfig
from esper_es.core import events as ev
from esper_es.core.outcomes import OutcomeTracker
from esper_es.replay import replay, resume
from esper_es.store.verify import verify
from esper_es.trainer import built_in_trainer


def with_outcomes(config: RunConfig) -> RunConfig:
    return attrs.evolve(config, controller=attrs.evolve(config.controller, record_outcomes=True))


def decided(decision_id: str, step: int, contributions: dict[str, float]) -> ev.AdaptationDecided:
    seeds = [{"seed": s, "contribution": c} for s, c in contributions.items()]
    return ev.AdaptationDecided(
        decision_id=decision_id, layer="l", adaptation_type="add_seed", parameters={},
        reason="", strategy="diversify", source="controller", telemetry_digest=None,
        telemetry={"layers": [{"name": "l", "seeds": seeds}]}, step=step,
    )  # fmt: skip


def planned(decision_id: str, step: int) -> ev.AdaptationPlanned:
    return ev.AdaptationPlanned(
        decision_id=decision_id, strategy="diversify", commands=[], notes="", step=step
    )


def germinated(seed: str, step: int) -> ev.SeedGerminated:
    return ev.SeedGerminated(
        seed=seed, step=step, layer="l", blueprint="mlp", kernel_id="k", init_seed=1,
        blend_target=1.0, config={},
    )  # fmt: skip


def test_an_added_seed_pays_its_fossilized_contribution_and_a_culled_one_nothing() -> None:
    t = OutcomeTracker()
    for e in (decided("d1", 1, {}), germinated("l/0", 1), germinated("l/1", 1), planned("d1", 1)):
        t.observe(e)
    assert t.drain(2) == [] and t.pending() == ["d1"]
    t.observe(ev.SeedFossilized(seed="l/0", step=5, contribution=0.25, instability=0.0))
    assert t.drain(6) == []  # l/1 still open
    t.observe(ev.SeedCulled(seed="l/1", step=7, reason="weak"))
    (out,) = t.drain(8)
    assert out.decision_id == "d1" and out.step == 8 and out.decided_step == 1
    assert out.contribution == pytest.approx(0.25) and out.paid
    assert [(p["seed"], p["role"], p["fate"]) for p in out.parts] == [
        ("l/0", "added", "fossilized"), ("l/1", "added", "culled"),
    ]  # fmt: skip
    assert t.drain(9) == [] and t.pending() == []


def test_removing_a_harmful_seed_pays_and_an_empty_decision_does_not() -> None:
    t = OutcomeTracker()
    t.observe(decided("d1", 3, {"l/0": -0.1}))
    t.observe(ev.SeedCulled(seed="l/0", step=3, reason="specialize"))
    t.observe(planned("d1", 3))
    t.observe(decided("d2", 3, {}))
    t.observe(planned("d2", 3))
    first, second = t.drain(4)
    assert first.contribution == pytest.approx(0.1) and first.paid
    assert first.parts[0]["role"] == "removed"
    assert second.contribution == 0.0 and not second.paid and second.parts == []


def test_an_outcome_already_in_the_log_is_not_due_again() -> None:
    t = OutcomeTracker()
    t.observe(decided("d1", 3, {}))
    t.observe(planned("d1", 3))
    (out,) = t.drain(4)
    again = OutcomeTracker()
    for e in (decided("d1", 3, {}), planned("d1", 3), out):
        again.observe(e)
    assert again.drain(5) == []


def test_disabled_tracker_records_nothing() -> None:
    t = OutcomeTracker(enabled=False)
    t.observe(decided("d1", 3, {}))
    t.observe(planned("d1", 3))
    assert t.drain(4) == []


@pytest.fixture(scope="module")
def outcome_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, RunConfig]:
    import tomllib

    from replay_support import QUICK

    from esper_es.config import config_from_dict

    config = with_outcomes(config_from_dict(tomllib.loads(QUICK)))
    path = tmp_path_factory.mktemp("outcomes") / "run.db"
    result = scripted_factory(config, 0, path).run()
    return path, result.fingerprint, config


def test_a_scripted_run_records_outcomes_that_replay_and_recompute(
    outcome_run: tuple[Path, str, RunConfig],
) -> None:
    path, fingerprint, _ = outcome_run
    outs = [r.event for r in events(path, "DecisionOutcomeMeasured")]
    decisions = {r.event.decision_id: r.event for r in events(path, "AdaptationDecided")}
    assert outs, "a scripted run with every strategy resolves some decisions"
    assert len({o.decision_id for o in outs}) == len(outs)
    for o in outs:
        d = decisions[o.decision_id]
        assert o.strategy == d.strategy and o.step >= d.step
        assert o.paid == (o.contribution > 0)
        assert o.contribution == pytest.approx(sum(p["contribution"] for p in o.parts))
    verify(path)
    assert replay(path, trainer_factory=scripted_factory).fingerprint == fingerprint
    again = replay(path, trainer_factory=scripted_factory, recompute_decisions=True)
    assert again.fingerprint == fingerprint


@pytest.mark.parametrize("step", [5, 13])
def test_resume_records_the_same_outcomes(
    outcome_run: tuple[Path, str, RunConfig], tmp_path: Path, step: int
) -> None:
    ref_path, fingerprint, config = outcome_run
    path = tmp_path / "stopped.db"
    stopped = built_in_trainer(
        config, seed=0, db_path=path, controller=Scripted(), on_step=stop_at(step)
    ).run()
    assert stopped.interrupted
    result = resume(path, trainer_factory=scripted_factory)
    assert result.fingerprint == fingerprint

    def outcomes(p: Path) -> list[Any]:
        return [(r.event.decision_id, r.event.step, r.event.contribution)
                for r in events(p, "DecisionOutcomeMeasured")]  # fmt: skip

    assert outcomes(path) == outcomes(ref_path)
    assert row_hashes(path)  # the resumed log verifies
    verify(path)


def test_the_report_counts_decisions_and_paid_outcomes_per_strategy(
    outcome_run: tuple[Path, str, RunConfig], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from esper_es.cli.main import main

    path, _, _ = outcome_run
    outs = [r.event for r in events(path, "DecisionOutcomeMeasured")]
    assert main(["report", str(path), "--out", str(tmp_path / "rep"), "--json"]) == 0
    rows = {r["strategy"]: r for r in json.loads(capsys.readouterr().out)["strategies"]}
    assert set(rows) == {"diversify", "replace", "specialize", "ensemble"}
    assert all(r["decisions"] == 1 for r in rows.values())  # Scripted: one of each
    assert sum(r["measured"] for r in rows.values()) == len(outs)
    assert sum(r["paid"] for r in rows.values()) == sum(o.paid for o in outs)
    assert "Strategies: how often they paid" in (tmp_path / "rep" / "index.html").read_text()
