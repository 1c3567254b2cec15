"""Replay, resume and rollback on freshly trained runs: bit for bit, divergences pinpointed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from replay_support import QUICK, copy_db, rewrite_payload, row_hashes

from esper_es.cli.main import main
from esper_es.config import RunConfig
from esper_es.controller import Telemetry
from esper_es.core.decisions import AdaptationDecision
from esper_es.errors import DatabaseLocked, EnvironmentMismatch
from esper_es.nn.fingerprint import model_fingerprint
from esper_es.replay import Divergence, InvalidRollbackPoint, load_model, replay, resume, rollback
from esper_es.replay.log import RecordedLog
from esper_es.replay.rollback import boundary_ends
from esper_es.store.database import RunDatabase
from esper_es.store.verify import verify
from esper_es.trainer import Trainer, built_in_trainer


class Scripted:
    """A controller with a fixed plan of decisions by step: all four strategies."""

    PLAN = {
        4: AdaptationDecision(
            layer_name="layer1", adaptation_type="add_seed", parameters={"num_seeds": 2}
        ),
        8: AdaptationDecision(layer_name="layer2", adaptation_type="modify_architecture"),
        12: AdaptationDecision(layer_name="layer1", adaptation_type="optimize_parameters"),
        16: AdaptationDecision(layer_name="layer1", adaptation_type="remove_seed"),
    }

    def decide(self, telemetry: Telemetry) -> list[AdaptationDecision]:
        decision = self.PLAN.get(telemetry.step)
        return [decision] if decision is not None else []


def scripted_factory(config: RunConfig, seed: int, path: Path) -> Trainer:
    """The trainer of a scripted run, as `replay(..., trainer_factory=...)` takes it."""
    return built_in_trainer(config, seed=seed, db_path=path, controller=Scripted())


def events(db_path: Path, type_name: str) -> list[Any]:
    with RunDatabase.open(db_path, readonly=True) as db:
        return list(db.read(types=[type_name]))


@pytest.fixture(scope="module")
def scripted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished scripted run (every strategy), shared by the read-only tests."""
    import tomllib

    from esper_es.config import config_from_dict

    path = tmp_path_factory.mktemp("scripted") / "run.db"
    config = config_from_dict(tomllib.loads(QUICK))
    # Checkpoints between the epoch-end snapshots, for the perturbation test.
    config = attrs.evolve(config, train=attrs.evolve(config.train, checkpoint_every_steps=3))
    result = scripted_factory(config, 0, path).run()
    return path, result.fingerprint


def test_replay_and_recompute_reproduce_every_strategy(scripted_run: tuple[Path, str]) -> None:
    path, fingerprint = scripted_run
    planned = {e.payload["strategy"] for e in events(path, "AdaptationPlanned")}
    assert planned == {"diversify", "ensemble", "replace", "specialize"}
    result = replay(path, trainer_factory=scripted_factory)
    assert result.fingerprint == fingerprint
    assert result.checkpoints_checked == len(events(path, "Checkpointed"))
    again = replay(path, trainer_factory=scripted_factory, recompute_decisions=True)
    assert again.fingerprint == fingerprint and again.head_seq == result.head_seq


def test_a_perturbed_snapshot_diverges_at_the_next_checkpoint(
    scripted_run: tuple[Path, str],
) -> None:
    path, _ = scripted_run
    checkpoints = events(path, "Checkpointed")
    first_snap = next(c for c in checkpoints if c.payload["snapshot"] and c.payload["step"] > 0)
    following = next(c for c in checkpoints if c.seq > first_snap.seq)

    def perturb(trainer: Trainer) -> None:
        with torch.no_grad():
            trainer.model.get_parameter("head.weight").view(-1)[0] += 1e-3

    with pytest.raises(Divergence) as caught:
        replay(path, to_seq=following.seq, trainer_factory=scripted_factory,
               after_restore=perturb)  # fmt: skip
    assert caught.value.seq == following.seq
    assert "head.weight" in caught.value.tensors


def test_a_changed_decision_is_reported_at_its_seq(
    scripted_run: tuple[Path, str], tmp_path: Path
) -> None:
    path, _ = scripted_run
    forged = copy_db(path, tmp_path / "forged.db")
    decided = events(forged, "AdaptationDecided")[1]

    def change(payload: dict[str, Any]) -> None:
        payload["parameters"] = {"num_seeds": 1}

    rewrite_payload(forged, decided.seq, change)
    with pytest.raises(Divergence) as caught:
        replay(forged, trainer_factory=scripted_factory, recompute_decisions=True)
    assert caught.value.seq == decided.seq
    assert caught.value.recorded["parameters"] == {"num_seeds": 1}


def test_environment_mismatch_is_refused_unless_overridden(
    scripted_run: tuple[Path, str], tmp_path: Path
) -> None:
    path, fingerprint = scripted_run
    forged = copy_db(path, tmp_path / "env.db")

    def change(payload: dict[str, Any]) -> None:
        payload["environment"]["torch_num_interop_threads"] += 3

    rewrite_payload(forged, 1, change)
    with pytest.raises(EnvironmentMismatch) as caught:
        replay(forged, trainer_factory=scripted_factory)
    assert [d[0] for d in caught.value.differences] == ["torch_num_interop_threads"]
    assert main(["replay", str(forged), "--json"]) == 4
    ok = replay(forged, trainer_factory=scripted_factory, allow_env_mismatch=True)
    assert ok.fingerprint == fingerprint
    assert [d[0] for d in ok.environment_differences] == ["torch_num_interop_threads"]


def test_replay_out_loads_back_to_the_same_fingerprint(
    scripted_run: tuple[Path, str], tmp_path: Path
) -> None:
    path, _ = scripted_run
    mid = events(path, "Checkpointed")[-2].seq
    result = replay(path, to_seq=mid, trainer_factory=scripted_factory, out=tmp_path / "m.pt")
    assert result.from_snapshot is not None
    model = load_model(tmp_path / "m.pt")
    assert model_fingerprint(model) == result.fingerprint


def stop_at(step: int) -> Any:
    def hook(trainer: Trainer, now: int) -> None:
        if now == step:
            trainer._stop = True  # what the SIGINT handler does

    return hook


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The fingerprint of the quick built-in run, never interrupted."""
    import tomllib

    from esper_es.config import config_from_dict

    path = tmp_path_factory.mktemp("ref") / "ref.db"
    config = config_from_dict(tomllib.loads(QUICK))
    return built_in_trainer(config, seed=0, db_path=path).run().fingerprint


@pytest.mark.parametrize("step", [3, 8, 13])
def test_ctrl_c_then_resume_is_bit_identical(
    quick: RunConfig, reference: str, tmp_path: Path, step: int
) -> None:
    path = tmp_path / "stopped.db"
    stopped = built_in_trainer(quick, seed=0, db_path=path, on_step=stop_at(step)).run()
    assert stopped.interrupted and stopped.steps == step
    before = row_hashes(path)
    result = resume(path)
    assert not result.interrupted and result.fingerprint == reference
    assert {s: h for s, h in row_hashes(path).items() if s in before} == before
    verify(path)
    assert replay(path).fingerprint == reference


def test_rollback_then_resume_reproduces_the_run(
    quick: RunConfig, reference: str, tmp_path: Path
) -> None:
    path = tmp_path / "run.db"
    built_in_trainer(quick, seed=0, db_path=path).run()
    before = row_hashes(path)
    with RunDatabase.open(path, readonly=True) as db:
        ends = boundary_ends(RecordedLog(db, "main"))
        inside = next(s for s in range(ends[3] + 1, ends[-1]) if s not in ends)
    with pytest.raises(InvalidRollbackPoint, match="nearest valid seqs"):
        rollback(path, inside)
    assert main(["rollback", str(path), "--to", str(inside)]) == 2
    target = ends[len(ends) // 2]
    opened = rollback(path, target)
    assert opened["branch"] == "b1" and opened["to_seq"] == target
    assert {b["name"]: b["fork_seq"] for b in opened["branches"]} == {"main": 0, "b1": target}
    # the state at the target is exactly main's there
    assert opened["fingerprint"] == replay(path, to_seq=target).fingerprint
    result = resume(path)
    assert result.branch == "b1" and result.fingerprint == reference
    assert {s: h for s, h in row_hashes(path).items() if s in before} == before
    verify(path)
    assert replay(path, branch="b1").fingerprint == reference
    assert replay(path, branch="b1", recompute_decisions=True).fingerprint == reference


def test_resume_takes_the_writer_lock(quick: RunConfig, tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    built_in_trainer(quick, seed=0, db_path=path, on_step=stop_at(3)).run()
    with RunDatabase.open(path):
        with pytest.raises(DatabaseLocked):
            resume(path)
        assert main(["resume", str(path), "--json"]) == 5
