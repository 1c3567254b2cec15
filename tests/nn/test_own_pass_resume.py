"""The seeds' own pass started at the seed point (`nn.resumable`): the same bits, L8 kept."""

from __future__ import annotations

import copy
import struct
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nn_support import Log, bits, grown_digits, host_grads, own_pass_trainer, seeded_case
from torch import Tensor, nn

from esper_es.core.lifecycle import Stage
from esper_es.nn import CharTransformer, DigitsCNN, Projector, VectorMLP, place_seed_layers
from esper_es.nn.blueprints import is_builtin_blueprint, register_blueprint, unregister_blueprint
from esper_es.nn.placement import find_seed_layers
from esper_es.nn.resumable import ResumableHost, capturing, mode_independent_kernels
from esper_es.nn.seed_layer import ActivationCapture
from esper_es.trainer.own_pass import OwnPass
from esper_es.trainer.tasks import classification_loss, output_loss

RESUMING = output_loss(classification_loss)


def targets(x: Tensor, g: torch.Generator) -> Tensor:
    """Labels for a host's input: a class per example, or a next token per position."""
    if x.dtype == torch.long:
        return torch.randint(0, 11, x.shape, generator=g)
    return torch.randint(0, 6, (x.shape[0],), generator=g)


Grads = tuple[dict[str, bytes], dict[str, bytes]]


def step(model: nn.Module, batch: Any, own: OwnPass) -> tuple[Grads, list[str]]:
    """A trainer step's passes on `model`: ((host, kernel gradients and the shared pass's
    measurement) as bits, layers resumed)."""
    t = own_pass_trainer(model, find_seed_layers(model), classification_loss)
    model.train()
    training = own.training_seeds(t)
    with capturing(own.start_points(t, training)) as starts:
        loss = classification_loss(model, batch)
    loss.backward()  # type: ignore[no-untyped-call]
    without, signals = own.run(t, batch, training, starts, measure=True)
    measured = {seed: struct.pack("<d", value) for seed, value in signals}
    measured["without"] = struct.pack("<d", without)
    kernels = measured | {
        f"{name}/{i}/{pname}": bits(p.grad) if p.grad is not None else b"none"
        for name, layer in t.layers.items()
        for i in range(layer.num_seeds)
        if (k := layer.kernel(i)) is not None
        for pname, p in k.named_parameters()
    }
    return (host_grads(model), kernels), sorted(starts)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_l8_the_resumed_own_pass_gives_the_full_pass_bits_and_leaves_the_host_alone(
    data: st.DataObject,
) -> None:
    model, plain, x, _ = seeded_case(data, "TRAINING")
    batch = (x, targets(x, torch.Generator().manual_seed(3)))
    resumed, at = step(copy.deepcopy(model), batch, OwnPass(RESUMING))
    full, none = step(copy.deepcopy(model), batch, OwnPass(None))
    assert resumed == full and none == []
    # It did start at the seed point wherever the host can resume there and a seed trains.
    host: ResumableHost = model  # type: ignore[assignment]
    training = {n for n, ly in find_seed_layers(model).items() if ly.kernel_slots(Stage.TRAINING)}
    assert set(at) == {n for n in training if host.resumes_at(n)}
    # L8: the host's gradients are those of the host without seeds.
    plain.train()
    classification_loss(plain, batch).backward()  # type: ignore[no-untyped-call]
    assert resumed[0] == host_grads(plain)


def resumed_and_full(model: nn.Module, seed: int) -> tuple[Grads, list[str], Grads, Any]:
    """A digits batch drawn from `seed` through `step` resumed and from the input: (resumed
    bits, layers resumed, full-pass bits, the batch)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 1, 8, 8, generator=g)
    batch = (x, targets(x, g))
    resumed, at = step(copy.deepcopy(model), batch, OwnPass(RESUMING))
    full, _ = step(copy.deepcopy(model), batch, OwnPass(None))
    return resumed, at, full, batch


def test_a_blending_seed_before_the_point_is_in_the_activation_the_pass_starts_from() -> None:
    model, _ = grown_digits(
        {"layer1": 1, "layer2": 1},
        [("layer1/0", "conv3x3", 4, 0.5), ("layer2/0", "mlp", 5, None)],
        host_seed=1,
    )
    resumed, at, full, _ = resumed_and_full(model, 0)
    assert at == ["layer2"] and resumed == full
    assert any(v != b"none" for v in resumed[1].values())


def test_the_loss_without_the_seeds_resumes_after_a_seed_blending_at_its_point() -> None:
    # The shared measurement's loss without the TRAINING seeds starts at the last point where a
    # seed trains: a kernel blending in that same seed layer must be in it.
    model, _ = grown_digits(
        {"layer1": 1, "layer2": 2},
        [
            ("layer1/0", "mlp", 5, None),
            ("layer2/0", "conv3x3", 4, 0.5),
            ("layer2/1", "lora", 2, None),
        ],
        host_seed=2,
    )
    resumed, at, full, batch = resumed_and_full(model, 1)
    assert at == ["layer1", "layer2"] and resumed == full
    blended = copy.deepcopy(model)
    find_seed_layers(blended)["layer2"].set_alpha(0, 0.0)
    unblended, _ = step(blended, batch, OwnPass(None))
    assert unblended[1]["without"] != full[1]["without"]  # the blending kernel counts


def test_a_capture_changed_in_place_is_not_used() -> None:
    capture = ActivationCapture()
    h = torch.randn(2, 3)
    capture.keep(h)
    kept = capture.take()
    assert kept is not None and torch.equal(kept, h) and not kept.requires_grad
    assert capture.take() is None  # taken once
    capture.keep(h)
    h.add_(1.0)
    assert capture.take() is None


@pytest.mark.parametrize(
    ("host", "x", "points"),
    [
        (DigitsCNN(seed=0), torch.randn(2, 1, 8, 8), DigitsCNN.CHAIN),
        (VectorMLP(in_features=5, hidden=4, seed=0), torch.randn(3, 5), VectorMLP.CHAIN),
        (
            CharTransformer(vocab_size=11, d_model=8, n_heads=2, max_len=12, seed=0),
            torch.randint(0, 11, (2, 6)),
            ("blocks.0", "blocks.1", "ln_f", "head"),
        ),
    ],
)
def test_each_built_in_host_resumes_its_forward_at_each_point(
    host: nn.Module, x: Tensor, points: tuple[str, ...]
) -> None:
    resumable: ResumableHost = host  # type: ignore[assignment]
    outputs: dict[str, Tensor] = {}
    hooks = [
        host.get_submodule(p).register_forward_hook(
            lambda m, a, out, p=p: outputs.__setitem__(p, out)
        )
        for p in points
    ]
    expected = host(x)
    for h in hooks:
        h.remove()
    for point in points:
        assert resumable.resumes_at(point)
        assert bits(resumable.forward_after(point, outputs[point])) == bits(expected)
    assert isinstance(host, ResumableHost)
    assert not resumable.resumes_at("nowhere")
    with pytest.raises(KeyError, match="nowhere"):
        resumable.forward_after("nowhere", expected)


def test_a_transformer_cannot_resume_inside_a_block() -> None:
    host = CharTransformer(vocab_size=11, d_model=8, n_heads=2, max_len=12, seed=0)
    assert not host.resumes_at("blocks.0.mlp") and not host.resumes_at("blocks.1.attn")


def test_the_pass_starts_from_the_input_for_kernels_it_cannot_vouch_for() -> None:
    @register_blueprint("test_mode_dependent")
    def _dropout(shape_kind: str, channels: int, config: Any) -> nn.Module:
        """A kernel that computes differently in training mode."""
        return nn.Sequential(nn.Conv2d(channels, channels, 1), nn.Dropout(0.5))

    try:
        model = DigitsCNN(seed=0)
        layers = place_seed_layers(model, {"layer1": 1}, model.example_input())
        log = Log()
        log.register(layers["layer1"])
        log.germinate("layer1/0", "test_mode_dependent", init_seed=1)
        log.walk("layer1/0", "start_training")
        Projector(model).apply_all(log.pairs())
        assert not is_builtin_blueprint("test_mode_dependent")
        assert not mode_independent_kernels(model)
        t = own_pass_trainer(model, layers, classification_loss)
        assert not OwnPass(RESUMING).resumes(t)
    finally:
        unregister_blueprint("test_mode_dependent")
    assert is_builtin_blueprint("conv3x3") and not is_builtin_blueprint("nowhere")


def test_the_pass_starts_from_the_input_with_a_users_loss_or_compiled_kernels() -> None:
    model = DigitsCNN(seed=0)
    layers = place_seed_layers(model, {"layer1": 1}, model.example_input())
    t = own_pass_trainer(model, layers, classification_loss)
    assert OwnPass(RESUMING).resumes(t)
    assert output_loss(lambda m, b: classification_loss(m, b)) is None
    assert not OwnPass(None).resumes(t)
    t.config.library.compile = True
    assert not OwnPass(RESUMING).resumes(t)
