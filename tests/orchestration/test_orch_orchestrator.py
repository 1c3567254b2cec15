"""The orchestrator: boundaries, tickets, the SPEC §4 call shape, the causal links, projection."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from orch_support import Run

from esper_es.command_bus import CommandBus, Outcome
from esper_es.core import commands as c
from esper_es.core.decisions import AdaptationDecision, SeedStats
from esper_es.core.lifecycle import Stage
from esper_es.nn import DigitsCNN, Projector, place_seed_layers
from esper_es.orchestrator import SeedOrchestrator
from esper_es.store.database import RunDatabase

MakeRun = Callable[..., Run]
DETAIL_KEYS = {"strategy", "decision_id", "plan", "commands", "refused", "seqs", "notes"}


def add(n: int = 2, **params: object) -> AdaptationDecision:
    return AdaptationDecision(
        layer_name="layer1",
        adaptation_type="add_neurons",
        parameters={"num_seeds": n, **params},
        reason="test",
    )


class FakeTrainer:
    """The least a trainer does at a step boundary for the orchestrator."""

    def __init__(self, orch: SeedOrchestrator, bus: CommandBus) -> None:
        self.orch, self.bus = orch, bus
        orch.attach(self)

    def boundary(self, step: int) -> list[Outcome]:
        commands = self.orch.commands_for_boundary(step, {})
        outcomes = self.bus.execute_all(commands)
        self.orch.settle(outcomes)
        return outcomes


def test_submitted_decisions_wait_for_the_boundary_and_link_by_decision_id(
    make_run: MakeRun,
) -> None:
    run = make_run({"layer1": 4})
    orch = run.orchestrator()
    trainer = FakeTrainer(orch, run.bus)
    telemetry = {"val_loss": [1.0, 0.99]}
    t1 = orch.submit(add(1), source="controller", telemetry=telemetry)
    t2 = orch.submit(add(1))
    head = run.db.head_seq()
    assert not t1.done() and run.db.head_seq() == head  # nothing happens before the boundary
    trainer.boundary(12)
    (ok1, d1), (ok2, d2) = t1.result(0), t2.result(0)
    assert ok1 and ok2 and set(d1) >= DETAIL_KEYS
    # The second decision planned against the first one's effect: different slots and kinds.
    assert (d1["plan"][0]["seed"], d2["plan"][0]["seed"]) == ("layer1/0", "layer1/1")
    assert d1["plan"][0]["blueprint"] != d2["plan"][0]["blueprint"]
    records = list(run.db.read(from_seq=head + 1))
    assert [r.seq for r in records if r.correlation_id == t1.decision_id] == d1["seqs"]
    decided = next(r for r in records if r.type == "AdaptationDecided")
    planned = next(r for r in records if r.type == "AdaptationPlanned")
    assert decided.payload["decision_id"] == planned.payload["decision_id"] == t1.decision_id
    assert decided.payload["source"] == "controller" and decided.payload["telemetry"] == telemetry
    assert decided.payload["telemetry_digest"].startswith("sha256:")
    assert decided.payload["step"] == planned.payload["step"] == 12
    # From any seed back to the decision and telemetry that created it.
    germ = next(
        r for r in records if r.type == "SeedGerminated" and r.payload["seed"] == "layer1/0"
    )
    assert germ.causation_id in {cmd["command_id"] for cmd in planned.payload["commands"]}
    origin = next(
        r
        for r in records
        if r.type == "AdaptationDecided" and r.correlation_id == germ.correlation_id
    )
    assert origin.payload["telemetry"] == telemetry and origin.payload["reason"] == "test"
    assert all(r.payload["step"] == 12 for r in records)


def test_a_bad_decision_fails_its_ticket_not_the_boundary(make_run: MakeRun) -> None:
    run = make_run({"layer1": 2})
    orch = run.orchestrator()
    trainer = FakeTrainer(orch, run.bus)
    real = orch.germination

    def germination(seed: str, blueprint: str, command_id: str) -> Any:
        if blueprint == "conv3x3":  # what only planning finds (a kernel that cannot be made)
            raise RuntimeError("no conv3x3 kernel")
        return real(seed, blueprint, command_id)

    orch.germination = germination
    bad = orch.submit(add(1))
    good = orch.submit(add(1, blueprint="depthwise"))
    head = run.db.head_seq()
    trainer.boundary(3)
    with pytest.raises(RuntimeError, match="conv3x3"):
        bad.result(0)
    assert run.db.head_seq() > head and good.result(0)[0]


def test_async_call_waits_for_the_attached_trainers_boundary(make_run: MakeRun) -> None:
    run = make_run({"layer1": 3})
    orch = run.orchestrator()
    trainer = FakeTrainer(orch, run.bus)

    async def main() -> tuple[bool, dict[str, Any]]:
        task = asyncio.create_task(orch.apply_architecture_modification(model=None, decision=add()))
        while orch.pending() == 0:
            await asyncio.sleep(0)
        assert not task.done()
        trainer.boundary(7)
        return await task

    ok, details = asyncio.run(main())
    assert ok and set(details) >= DETAIL_KEYS and details["step"] == 7
    assert len(details["plan"]) == 2


def test_async_call_without_a_trainer_applies_at_once(make_run: MakeRun) -> None:
    run = make_run({"layer1": 3})
    orch = run.orchestrator()
    ok, details = asyncio.run(orch.apply_architecture_modification(model=None, decision=add()))
    assert ok and set(details) >= DETAIL_KEYS and details["projected"] is False
    assert run.bus.seed("layer1/0").stage is Stage.GERMINATED


def test_sync_call_blocks_until_a_boundary_in_the_training_thread(make_run: MakeRun) -> None:
    run = make_run({"layer1": 3})
    orch = run.orchestrator()
    trainer = FakeTrainer(orch, run.bus)
    stop = threading.Event()

    def train() -> None:
        step = 0
        while not stop.is_set():
            if orch.pending():
                trainer.boundary(step)
            step += 1
            stop.wait(0.001)

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    try:
        ok, details = orch.apply_architecture_modification_sync(None, add(1), timeout=30)
    finally:
        stop.set()
        thread.join()
    assert ok and set(details) >= DETAIL_KEYS and details["refused"] == []
    assert run.bus.seed("layer1/0").stage is Stage.GERMINATED


def test_sync_call_from_the_training_thread_raises_instead_of_deadlocking(
    make_run: MakeRun,
) -> None:
    run = make_run({"layer1": 2})
    orch = run.orchestrator()
    FakeTrainer(orch, run.bus).boundary(0)  # this thread is now the training thread
    with pytest.raises(RuntimeError, match="submit"):
        orch.apply_architecture_modification_sync(None, add(1))


def test_abort_fails_in_flight_tickets(make_run: MakeRun) -> None:
    run = make_run({"layer1": 2})
    orch = run.orchestrator()
    FakeTrainer(orch, run.bus)
    ticket = orch.submit(add(1))
    orch.commands_for_boundary(0)
    orch.abort(OSError("disk full"))
    with pytest.raises(OSError, match="disk full"):
        ticket.result(0)


def test_immediate_path_projects_into_the_model_and_optimizer(tmp_path: object) -> None:
    torch.manual_seed(0)
    model = DigitsCNN(seed=1)
    layers = place_seed_layers(model, {"layer1": 3, "layer2": 1}, model.example_input())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with RunDatabase.create(f"{tmp_path}/run.db", "run-proj") as db:
        bus = CommandBus(db)
        setup: list[c.Command] = [c.StartRun(command_id="s0", run_id="run-proj", master_seed=5)]
        setup += [layer.register_command(f"s-{name}") for name, layer in layers.items()]
        bus.execute_all(setup)
        proj = Projector(model, opt)
        proj.apply_all((r.seq, r.event) for r in db.read())
        orch = SeedOrchestrator(bus, master_seed=5, projector=proj)
        x = torch.randn(4, 1, 8, 8)
        before = model(x)
        groups = len(opt.param_groups)
        ok, details = orch.apply_architecture_modification_sync(model, add(2))
        assert ok and details["projected"] is True
        assert proj.last_seq == db.head_seq()
        layer = layers["layer1"]
        germinated = [p for p in details["plan"] if p["type"] == "GerminateSeed"]
        assert len(germinated) == 2
        for p in germinated:
            index = layer.index_of(p["seed"])
            kernel = layer.kernel(index)
            assert kernel is not None and kernel.kernel_id == p["kernel_id"]
            group = proj.param_group(p["seed"])
            assert group is not None and group["kernel_id"] == p["kernel_id"]
            assert {id(q) for q in group["params"]} == {id(q) for q in kernel.parameters()}
        assert len(opt.param_groups) == groups + 2
        assert torch.equal(model(x), before)  # L7: germinated at alpha 0
        # The same master seed and command ids give the same kernels: replayable.
        assert details["plan"][0]["init_seed"] != details["plan"][1]["init_seed"]
        with pytest.raises(ValueError, match="projector"):
            orch.apply_architecture_modification_sync(DigitsCNN(), add(1))


def test_stats_drive_replace_through_the_boundary(make_run: MakeRun) -> None:
    run = make_run({"layer1": 3})
    run.put("layer1/0", Stage.TRAINING, "conv3x3")
    run.put("layer1/1", Stage.TRAINING, "norm")
    orch = run.orchestrator()
    FakeTrainer(orch, run.bus)
    ticket = orch.submit(
        AdaptationDecision(layer_name="layer1", adaptation_type="optimize_parameters")
    )
    stats = {"layer1/0": SeedStats(seed="layer1/0", contribution=0.5),
             "layer1/1": SeedStats(seed="layer1/1", contribution=-0.5)}  # fmt: skip
    orch.settle(run.bus.execute_all(orch.commands_for_boundary(4, stats)))
    ok, d = ticket.result(0)
    assert ok and [(p["type"], p["seed"]) for p in d["plan"]] == [
        ("CullSeed", "layer1/1"),
        ("EmbargoSeed", "layer1/1"),
        ("ReleaseSeed", "layer1/1"),
        ("GerminateSeed", "layer1/1"),
    ]


def test_a_quiet_boundary_is_noted_as_planning_an_empty_queue_would(make_run: MakeRun) -> None:
    run = make_run({"layer1": 2})
    quiet, planned = run.orchestrator(), run.orchestrator()
    head = run.db.head_seq()
    assert quiet.quiet_boundary(7) is True
    assert planned.commands_for_boundary(7, {}) == []
    for orch in (quiet, planned):
        assert (orch.step, orch.stats, orch._boundary_thread) == (7, {}, threading.get_ident())
    assert quiet.quiet_boundary(3) and quiet.step == 7  # the step never goes back
    assert run.db.head_seq() == head


def test_a_queued_decision_or_a_replay_makes_a_boundary_not_quiet(make_run: MakeRun) -> None:
    run = make_run({"layer1": 2})
    orch = run.orchestrator()
    trainer = FakeTrainer(orch, run.bus)
    ticket = orch.submit(add(1))
    assert orch.quiet_boundary(5) is False and orch.step == 0  # nothing noted: plan it
    trainer.boundary(5)
    assert ticket.result(0)[0]
    orch.arrange = lambda queue, step: (queue, [])
    assert orch.quiet_boundary(6) is False
