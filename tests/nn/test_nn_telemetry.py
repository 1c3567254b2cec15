"""Telemetry: counterfactual contribution, the seed's own training signal, grad-norm ratios."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from nn_support import Log
from torch import nn

from esper_es.nn import (
    DigitsCNN,
    Projector,
    SeedTelemetry,
    counterfactual_contribution,
    grad_norm_ratios,
    model_fingerprint,
    place_seed_layers,
    seed_losses,
)
from esper_es.nn.telemetry import SeedSignal

Batch = tuple[torch.Tensor, torch.Tensor]


def run() -> tuple[nn.Module, Batch]:
    model = DigitsCNN(seed=0)
    layers = place_seed_layers(model, {"layer1": 2}, model.example_input())
    log = Log()
    log.register(layers["layer1"])
    log.germinate("layer1/0", "conv3x3", init_seed=1)
    log.walk("layer1/0", "start_training", "start_grafting")
    log.blend("layer1/0", 0.7)
    log.germinate("layer1/1", "lora", init_seed=2)
    log.walk("layer1/1", "start_training")
    Projector(model).apply_all(log.pairs())
    g = torch.Generator().manual_seed(0)
    return model, (torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g))


def neg_loss(model: nn.Module, batch: Any) -> float:
    x, y = batch
    return -float(F.cross_entropy(model(x), y))


def loss(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def test_counterfactual_contribution_is_side_effect_free_and_correct() -> None:
    model, batch = run()
    model.train()
    fp, rng = model_fingerprint(model), torch.random.get_rng_state()
    contribution = counterfactual_contribution(model, "layer1/0", batch, neg_loss)
    assert model_fingerprint(model) == fp
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(m.training for m in model.modules())
    layer = model.esper_seeds["layer1"]
    assert layer.alpha(0) == 0.7 and layer.active
    with torch.no_grad():
        with_seed = neg_loss(model, batch)
        layer.set_alpha(0, 0.0)
        without = neg_loss(model, batch)
        layer.set_alpha(0, 0.7)
    assert contribution == pytest.approx(with_seed - without, abs=1e-6)
    assert contribution != 0.0


def test_seed_losses_and_the_training_signal() -> None:
    model, batch = run()
    fp = model_fingerprint(model)
    with_seed, without = seed_losses(model, "layer1/1", batch, loss)
    assert model_fingerprint(model) == fp and with_seed != without
    telemetry = SeedTelemetry(decay=0.5)
    telemetry.reset("layer1/1")
    telemetry.observe(model, "layer1/1", batch, loss)
    assert telemetry.improvement("layer1/1") == 0.0
    s = SeedSignal(decay=0.5)
    for value in (2.0, 1.0, 1.0):
        s.update(value, 2.0)
    assert s.improvement == pytest.approx((2.0 - 1.25) / 2.0)
    assert s.advantage == pytest.approx((2.0 - 1.25) / 2.0)


def test_observing_seeds_together_gives_the_same_bits_as_one_by_one() -> None:
    model, batch = run()
    fp = model_fingerprint(model)
    seeds = ["layer1/0", "layer1/1"]
    one_by_one, together = SeedTelemetry(decay=0.5), SeedTelemetry(decay=0.5)
    for _ in range(2):
        for seed in seeds:
            one_by_one.observe(model, seed, batch, loss)
        together.observe_all(model, seeds, batch, loss)
    assert together.signals == one_by_one.signals and len(together.signals) == 2
    assert model_fingerprint(model) == fp
    together.observe_all(model, [], batch, loss)  # no seed in TRAINING: no pass at all
    assert together.signals == one_by_one.signals
    # A data-parallel run's reduction sees each seed's measurement, as `observe` hands it.
    seen: list[tuple[float, float]] = []
    reduced = SeedTelemetry(decay=0.5, reduce=lambda m: seen.append(m) or (m[0] * 2, m[1] * 2))
    reduced.observe_all(model, seeds, batch, loss)
    assert len(seen) == 2 and seen[0][1] == seen[1][1]
    assert reduced.signals["layer1/0"].ema_with == seen[0][0] * 2


def test_grad_norm_ratios() -> None:
    model, batch = run()
    loss(model, batch).backward()
    ratios = grad_norm_ratios(model)
    assert set(ratios) == {"layer1/0", "layer1/1"}
    assert all(r > 0 for r in ratios.values())


def test_observing_from_the_seed_point_gives_the_same_bits_without_rerunning_the_prefix() -> None:
    from esper_es.trainer.tasks import classification_loss, cross_entropy_of

    model, batch = run()
    seeds = ["layer1/0", "layer1/1"]
    stem_calls: list[int] = []
    model.stem.register_forward_hook(lambda *_: stem_calls.append(1))
    full, resumed = SeedTelemetry(decay=0.5), SeedTelemetry(decay=0.5)
    for _ in range(2):
        full.observe_all(model, seeds, batch, classification_loss)
    assert len(stem_calls) == 2 * 3  # the loss without the seeds, then one pass per seed
    stem_calls.clear()
    for _ in range(2):
        resumed.observe_all(model, seeds, batch, classification_loss, cross_entropy_of)
    assert len(stem_calls) == 2  # only the pass without the seeds runs the layers before
    assert resumed.signals == full.signals and len(full.signals) == 2


def test_a_contribution_from_the_seed_point_is_the_same_number_with_one_prefix_pass() -> None:
    from esper_es.trainer.tasks import cross_entropy_of

    model, batch = run()
    stem_calls: list[int] = []
    model.stem.register_forward_hook(lambda *_: stem_calls.append(1))
    full = counterfactual_contribution(model, "layer1/0", batch, neg_loss)
    assert len(stem_calls) == 2
    stem_calls.clear()
    resumed = counterfactual_contribution(
        model, "layer1/0", batch, neg_loss, lambda out, b: -float(cross_entropy_of(out, b))
    )
    assert len(stem_calls) == 1 and resumed == full != 0.0
