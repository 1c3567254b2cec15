"""Training runs through the Python API: determinism, the four strategies, Ctrl-C, snapshots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from esper_es.config import RunConfig, load_config
from esper_es.controller import Telemetry
from esper_es.core.decisions import AdaptationDecision
from esper_es.store.database import RunDatabase
from esper_es.store.verify import verify
from esper_es.trainer import Trainer, built_in_trainer
from esper_es.trainer.snapshots import read_snapshot


def events_of(db_path: Path) -> list[tuple[str, dict[str, Any], str | None]]:
    """(type, payload, correlation id) of every event; RunStarted's run_id left out."""
    with RunDatabase.open(db_path, readonly=True) as db:
        out = []
        for rec in db.read():
            payload = dict(rec.payload)
            if rec.type == "RunStarted":
                payload.pop("run_id")
            out.append((rec.type, payload, rec.correlation_id))
        return out


def test_same_config_and_seed_give_the_same_log_and_fingerprint(
    quick_config: Path, tmp_path: Path
) -> None:
    config = load_config(quick_config)
    a = built_in_trainer(config, seed=3, db_path=tmp_path / "a.db").run(2)
    b = built_in_trainer(config, seed=3, db_path=tmp_path / "b.db").run(2)
    c = built_in_trainer(config, seed=4, db_path=tmp_path / "c.db").run(2)
    assert a.fingerprint == b.fingerprint
    assert a.run_id != b.run_id
    assert events_of(tmp_path / "a.db") == events_of(tmp_path / "b.db")
    assert any(t == "SeedGerminated" for t, _, _ in events_of(tmp_path / "a.db"))
    assert c.fingerprint != a.fingerprint


class Scripted:
    """A custom controller: a fixed plan of decisions by step (a pure function of telemetry)."""

    def __init__(self, plan: dict[int, AdaptationDecision]) -> None:
        self.plan = plan

    def decide(self, telemetry: Telemetry) -> list[AdaptationDecision]:
        decision = self.plan.get(telemetry.step)
        return [decision] if decision is not None else []


def test_each_of_the_four_strategies_runs_in_training(quick_config: Path, tmp_path: Path) -> None:
    config = load_config(quick_config)
    plan = {
        4: AdaptationDecision(
            layer_name="layer1", adaptation_type="add_seed", parameters={"num_seeds": 2}
        ),
        12: AdaptationDecision(layer_name="layer1", adaptation_type="optimize_parameters"),
        16: AdaptationDecision(layer_name="layer1", adaptation_type="remove_seed"),
    }
    tickets: list[Any] = []

    def user_decision(trainer: Trainer, step: int) -> None:
        if step == 8:
            decision = AdaptationDecision(
                layer_name="layer2", adaptation_type="modify_architecture"
            )
            tickets.append(trainer.submit(decision))

    db = tmp_path / "strategies.db"
    trainer = built_in_trainer(
        config, seed=0, db_path=db, controller=Scripted(plan), on_step=user_decision
    )
    result = trainer.run(2)
    assert not result.interrupted
    verify(db)
    events = events_of(db)
    planned = {p["strategy"] for t, p, _ in events if t == "AdaptationPlanned"}
    assert planned == {"diversify", "replace", "specialize", "ensemble"}
    sources = {p["source"] for t, p, _ in events if t == "AdaptationDecided"}
    assert sources == {"controller", "user"}
    # The user's ticket resolved at the boundary after it was submitted.
    assert tickets and tickets[0].done()
    success, details = tickets[0].result(timeout=0)
    assert success and details["strategy"] == "ensemble"
    decided = {p["decision_id"] for t, p, _ in events if t == "AdaptationDecided"}
    germinated = [corr for t, _, corr in events if t == "SeedGerminated"]
    assert germinated and set(germinated) <= decided


def test_interrupt_at_a_step_boundary_leaves_a_verifying_run(
    quick_config: Path, tmp_path: Path
) -> None:
    def interrupt(trainer: Trainer, step: int) -> None:
        if step == 7:
            raise KeyboardInterrupt

    db = tmp_path / "stopped.db"
    result = built_in_trainer(
        load_config(quick_config), seed=0, db_path=db, on_step=interrupt
    ).run()
    assert result.interrupted and result.steps == 7
    verify(db)
    events = events_of(db)
    kind, payload, _ = events[-1]
    assert kind == "TrainingStopped" and payload["reason"] == "interrupted"
    assert payload["step"] == 7
    kind, checkpoint, _ = events[-2]
    assert kind == "Checkpointed" and checkpoint["step"] == 7 and checkpoint["snapshot"]
    assert checkpoint["fingerprint"] == result.fingerprint
    with RunDatabase.open(db, readonly=True) as rdb:
        snap = read_snapshot(rdb, checkpoint["snapshot"])
    assert snap["position"] == {"epoch": 1, "step": 7}
    assert set(snap["model"]) == set(checkpoint["tensors"])


def test_snapshots_store_unchanged_tensors_once(tmp_path: Path) -> None:
    import torch

    from esper_es.nn.hosts import DigitsCNN
    from esper_es.trainer.snapshots import write_snapshot

    model = DigitsCNN(width=32, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.zeros(2, 1, 8, 8)).sum().backward()
    opt.step()
    with RunDatabase.create(tmp_path / "snap.db", "run-snap") as db:
        first = write_snapshot(db, model=model, optimizer=opt, rng_state=b"r", position={"e": 1})
        second = write_snapshot(db, model=model, optimizer=opt, rng_state=b"r", position={"e": 2})
        # B8: only the new manifest is stored again.
        assert first.new_bytes > 10_000
        assert second.new_bytes <= 0.01 * first.new_bytes
        assert second.new_blobs == 1
        back = read_snapshot(db, second.key)
    state = model.state_dict()
    assert back["model"].keys() == state.keys()
    assert all(torch.equal(back["model"][k], state[k]) for k in state)
    fresh = torch.optim.Adam(DigitsCNN(width=32, seed=1).parameters(), lr=0.5)
    fresh.load_state_dict(back["optimizer"])
    assert fresh.param_groups[0]["lr"] == 0.01
    assert torch.equal(fresh.state[fresh.param_groups[0]["params"][0]]["exp_avg"],
                       opt.state[opt.param_groups[0]["params"][0]]["exp_avg"])  # fmt: skip


def test_shipped_configs_load_and_digits_is_the_default() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    assert load_config(root / "digits.toml") == RunConfig()
    text = load_config(root / "text.toml")
    assert text.host.task == "text"
    assert RunConfig().to_dict() == load_config(root / "digits.toml").to_dict()


@pytest.mark.slow
def test_text_task_trains(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    result = built_in_trainer(
        load_config(root / "text.toml"), seed=0, db_path=tmp_path / "text.db"
    ).run()
    assert result.val_loss_end < result.val_loss_start
    verify(tmp_path / "text.db")
