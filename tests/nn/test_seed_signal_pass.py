"""The seed signal measured in the seeds' own-loss pass (`driver.signal_pass = "shared"`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from nn_support import grown_digits, own_pass_trainer
from torch import nn

from esper_es.config import RunConfig
from esper_es.nn import model_fingerprint, seed_losses
from esper_es.replay.replayer import replay
from esper_es.store.database import RunDatabase
from esper_es.trainer.api import built_in_trainer
from esper_es.trainer.own_pass import OwnPass

Batch = tuple[torch.Tensor, torch.Tensor]


def loss(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def two_training_seeds() -> tuple[nn.Module, Any, Batch]:
    model, layers = grown_digits(
        {"layer1": 2, "layer2": 1},
        [("layer1/1", "lora", 2, None), ("layer2/0", "conv3x3", 3, None)],
    )
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g))
    return model, own_pass_trainer(model, layers, loss), batch


def test_the_shared_pass_measures_what_separate_passes_measure_with_fewer_forwards() -> None:
    model, trainer, batch = two_training_seeds()
    model.train()
    expected = {s: seed_losses(model, s, batch, loss) for s in ("layer1/1", "layer2/0")}
    fp, rng = model_fingerprint(model), torch.random.get_rng_state()
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(torch.is_grad_enabled()))

    own = OwnPass(None)  # through the host's whole forward, as a user's loss needs
    without, signals = own.run(trainer, batch, own.training_seeds(trainer), {}, measure=True)

    assert [s for s, _ in signals] == ["layer1/1", "layer2/0"]
    for seed, with_seed in signals:
        want_with, want_without = expected[seed]
        assert math.isclose(with_seed, want_with, rel_tol=1e-6) and with_seed != without
        assert without == want_without
    # One no-grad forward for the loss without the seeds, one own-loss pass per seed; the
    # separate measurement would add a no-grad forward per seed on top of these.
    assert forwards == [False, True, True]
    # The pass changed only the kernels' gradients: weights, RNG, train flags, host grads.
    assert model_fingerprint(model) == fp and torch.equal(torch.random.get_rng_state(), rng)
    assert all(m.training for m in model.modules())
    kernels = {
        id(p)
        for ly in trainer.layers.values()
        for i in range(ly.num_seeds)
        if (k := ly.kernel(i)) is not None
        for p in k.parameters()
    }
    assert all(p.grad is None for p in model.parameters() if id(p) not in kernels)
    assert all(p.grad is not None for p in model.parameters() if id(p) in kernels)


def test_without_measuring_the_pass_returns_no_signal() -> None:
    _, trainer, batch = two_training_seeds()
    own = OwnPass(None)
    without, signals = own.run(trainer, batch, own.training_seeds(trainer), {})
    assert math.isnan(without) and signals == []


def test_a_run_measuring_in_the_shared_pass_recomputes_its_own_decisions(tmp_path: Path) -> None:
    base = RunConfig()
    config = attrs.evolve(
        base,
        train=attrs.evolve(base.train, epochs=4),
        driver=attrs.evolve(base.driver, signal_pass="shared"),
    )
    db = tmp_path / "shared.db"
    result = built_in_trainer(config, seed=0, db_path=db).run()
    with RunDatabase.open(db, readonly=True) as store:
        grafted = [r.event for r in store.read(types=["SeedGraftingStarted"])]
    assert grafted, "the run must take a TRAINING gate for the check to mean anything"
    # The driver re-run on re-executed telemetry issues the same commands: the shared
    # measurement is as reproducible as the training it rides on.
    again = replay(db, recompute_decisions=True)
    assert again.fingerprint == result.fingerprint
