"""Your own model (issue 9, item 6): seeded from the master seed, initial weights in the log,
replayed from the CLI with the run's factory; a custom host with no factory exits 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import esper_es
from esper_es.cli.main import main as cli_main
from esper_es.config import RunConfig, config_from_dict
from esper_es.errors import EXIT_OK, EXIT_USAGE, HostFactoryError
from esper_es.replay import replay
from esper_es.replay.log import RecordedLog
from esper_es.replay.rollback import boundary_ends
from esper_es.store.database import RunDatabase
from esper_es.trainer import TrainSpec, train

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
QUICK = (FIXTURES / "quick_trainer_run.toml").read_text("utf-8")
sys.path.insert(0, str(FIXTURES))

import custom_hosts  # noqa: E402


@pytest.fixture
def config() -> RunConfig:
    """The quick trainer config, two epochs (the controller decides at once)."""
    cfg = config_from_dict(tomllib.loads(QUICK))
    return attrs.evolve(cfg, train=attrs.evolve(cfg.train, epochs=2))


def esper(*argv: object) -> subprocess.CompletedProcess[str]:
    """`esper-es ARGS` in a fresh process that can import the test hosts (as a user's would)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FIXTURES), str(REPO)])}
    return subprocess.run(
        [sys.executable, "-m", "esper_es.cli.main", *map(str, argv)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def one_json(text: str) -> dict[str, Any]:
    """The single JSON object a `--json` command printed."""
    (line,) = [ln for ln in text.splitlines() if ln.strip()]
    obj: dict[str, Any] = json.loads(line)
    return obj


def started(db: Path) -> dict[str, Any]:
    """The RunStarted payload of a run database."""
    with RunDatabase.open(db, readonly=True) as rdb:
        (rec,) = rdb.read(types=["RunStarted"])
        return dict(rec.payload)


def test_batchnorm_host_by_factory_replays_from_the_cli_bit_for_bit(
    tmp_path: Path, config: RunConfig
) -> None:
    db = tmp_path / "bn.db"
    torch.manual_seed(987)  # the caller's RNG state must not matter
    result = train(custom_hosts.bn_run, db_path=db, config=config, seed=0)
    run = started(db)
    assert run["host"] == {"kind": "custom", "factory": "custom_hosts:bn_run"}
    assert run["initial_weights"]["fingerprint"].startswith("sha256:")
    assert result.seeds != {"DORMANT": 2}, "the quick run should grow something"
    # The recorded factory is used: no --factory needed.
    proc = esper("replay", db, "--json")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert one_json(proc.stdout)["fingerprint"] == result.fingerprint
    # Same seed, same run, whatever the global RNG held before.
    torch.manual_seed(4321)
    again = train("custom_hosts:bn_run", db_path=tmp_path / "bn2.db", config=config, seed=0)
    assert again.fingerprint == result.fingerprint


def test_dropout_host_passed_directly_needs_a_factory_on_the_cli(
    tmp_path: Path, config: RunConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "drop.db"
    x, y = custom_hosts.drop_data()
    result = train(
        custom_hosts.DropNet(),  # built by the caller, unseeded: its weights are in the log
        example_input=x[:2], seed_layers={"act": 2},
        train_data=(x[:64], y[:64]), val_data=(x[64:], y[64:]),
        loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]),
        db_path=db, config=config, seed=0,
    )  # fmt: skip
    assert started(db)["host"] == {"kind": "custom", "factory": None}
    proc = esper("replay", db)
    assert proc.returncode == EXIT_USAGE
    assert "--factory" in proc.stderr and "custom host" in proc.stderr
    assert "body" not in proc.stderr  # not rebuilt as the built-in digits network
    # The factory builds a differently initialised DropNet: the log's initial weights win.
    proc = esper("replay", db, "--json", "--factory", "custom_hosts:drop_run")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert one_json(proc.stdout)["fingerprint"] == result.fingerprint
    with pytest.raises(HostFactoryError, match="--factory"):
        replay(db)
    # Rollback and resume take it too: back to a mid-run boundary, then on to the same end.
    with RunDatabase.open(db, readonly=True) as rdb:
        ends = boundary_ends(RecordedLog(rdb, "main"))
    capsys.readouterr()
    mid = str(ends[len(ends) // 2])
    assert cli_main(["rollback", str(db), "--to", mid]) == EXIT_USAGE
    factory = ["--factory", "custom_hosts:drop_run"]
    assert cli_main(["rollback", str(db), "--to", mid, "--json", *factory]) == EXIT_OK
    branch = one_json(capsys.readouterr().out)["branch"]
    assert cli_main(["resume", str(db), "--branch", branch, "--json", *factory]) == EXIT_OK
    assert one_json(capsys.readouterr().out)["fingerprint"] == result.fingerprint


def test_readme_snippet_twice_with_seed_0_gives_one_fingerprint(
    tmp_path: Path, config: RunConfig
) -> None:
    """README "Training your own model": the host built by `train` from the master seed."""

    class MyNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block1 = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
            self.block2 = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.block2(self.block1(x)))

    x, y = custom_hosts.drop_data()
    prints = []
    for i in range(2):
        torch.randn(i + 1)  # whatever the user's code drew before
        result = train(
            MyNet, example_input=x[:2], seed_layers={"block1": 2, "block2": 2},
            train_data=(x[:64], y[:64]), val_data=(x[64:], y[64:]),
            loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]),
            metric_fn=lambda m, b: float((m(b[0]).argmax(1) == b[1]).float().mean()),
            optimizer_factory=lambda ps: torch.optim.AdamW(ps, lr=1e-3),
            db_path=tmp_path / f"mine{i}.db", config=config, seed=0,
        )  # fmt: skip
        prints.append(result.fingerprint)
    # A model built before `train`, after `esper_es.seed_everything(0)`, starts the same.
    esper_es.seed_everything(0)
    model = MyNet()
    same = train(
        model, example_input=x[:2], seed_layers={"block1": 2, "block2": 2},
        train_data=(x[:64], y[:64]), val_data=(x[64:], y[64:]),
        loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]),
        metric_fn=lambda m, b: float((m(b[0]).argmax(1) == b[1]).float().mean()),
        optimizer_factory=lambda ps: torch.optim.AdamW(ps, lr=1e-3),
        db_path=tmp_path / "mine2.db", config=config, seed=0,
    )  # fmt: skip
    assert prints[0] == prints[1] == same.fingerprint


def test_replay_restores_the_logged_initial_weights_and_checks_them(
    tmp_path: Path, config: RunConfig
) -> None:
    db = tmp_path / "bn.db"
    result = train(custom_hosts.bn_run, db_path=db, config=config, seed=3)

    def perturbed() -> TrainSpec:
        spec = custom_hosts.bn_run()
        with torch.no_grad():
            spec.host[0].weight.add_(1.0)  # a factory initialising differently
        return spec

    from esper_es.replay.factory import run_factory

    custom_hosts.perturbed = perturbed  # type: ignore[attr-defined]
    assert replay(db, trainer_factory=run_factory("custom_hosts:perturbed")).fingerprint == (
        result.fingerprint
    )

    def other_host() -> TrainSpec:
        return attrs.evolve(custom_hosts.bn_run(), host=custom_hosts.bn_host()[:-1])

    custom_hosts.other_host = other_host  # type: ignore[attr-defined]
    with pytest.raises(HostFactoryError, match="not the run's host"):
        replay(db, trainer_factory=run_factory("custom_hosts:other_host"))
