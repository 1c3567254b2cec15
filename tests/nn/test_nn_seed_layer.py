"""Seed layers: the identity while dormant (L7), isolation while training (L8), blending after."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nn_support import Log, bits, host_grads, seeded_case, shape_for
from torch import Tensor, nn

from esper_es.core.lifecycle import BLENDING_STAGES, Stage
from esper_es.nn import (
    Projector,
    SeedLayer,
    build_kernel,
    fitting_blueprints,
)


def test_dormant_layer_returns_its_input_itself() -> None:
    layer = SeedLayer("l", "image", 3, 4)
    x = torch.randn(2, 3, 4, 4)
    assert layer(x) is x
    assert not layer.active


@settings(max_examples=30, deadline=None)
@given(data=st.data(), stage=st.sampled_from(["GERMINATED", "TRAINING"]))
def test_l7_germinating_leaves_outputs_bit_identical(data: st.DataObject, stage: str) -> None:
    model, plain, x, _ = seeded_case(data, stage)
    with torch.no_grad():
        assert bits(model(x)) == bits(plain(x))
    assert bits(model(x)) == bits(plain(x))  # with autograd on, training seeds run, add nothing


@settings(max_examples=30, deadline=None)
@given(data=st.data(), isolated=st.booleans())
def test_l8_training_seeds_leave_host_outputs_and_gradients_bit_identical(
    data: st.DataObject, isolated: bool
) -> None:
    """Whether training kernels run isolated in the pass or are left out of it (own-loss)."""
    model, plain, x, proj = seeded_case(data, "TRAINING")
    for layer in proj.layers.values():
        layer.isolated_training = isolated
    target_g = torch.Generator().manual_seed(5)
    outs = []
    for m in (model, plain):
        out = m(x)
        outs.append(out)
        weights = torch.randn(out.shape, generator=target_g)
        target_g.manual_seed(5)
        (out * weights).sum().backward()
    assert bits(outs[0]) == bits(outs[1])
    assert host_grads(model) == host_grads(plain)
    # ... while every training kernel did receive a gradient from the task, when isolated;
    # left out (its own loss trains it), it did no work in the pass.
    for layer in proj.layers.values():
        for i in range(layer.num_seeds):
            k = layer.kernel(i)
            if k is not None:
                assert all((p.grad is not None) == isolated for p in k.parameters())


signed_floats = st.floats(width=32, allow_nan=True, allow_infinity=True)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(signed_floats, min_size=8, max_size=8),
    blueprint=st.sampled_from(fitting_blueprints("vector", 4)),
)
def test_isolation_is_exact_for_signed_zeros_inf_and_nan(
    values: list[float], blueprint: str
) -> None:
    layer = SeedLayer("l", "vector", 4, 1)
    layer.set_stage(0, Stage.TRAINING)
    layer.set_kernel(0, build_kernel(blueprint, "vector", 4, 1))
    x = torch.tensor([*values, -0.0, 0.0, -0.0, 0.0], dtype=torch.float32).reshape(3, 4)
    x.requires_grad_(True)
    y = layer(x)
    assert bits(y) == bits(x)
    y.backward(torch.full_like(y, -0.0))
    assert x.grad is not None and bits(x.grad) == bits(torch.full_like(x, -0.0))


def test_isolation_tolerates_inplace_ops_and_a_nan_kernel() -> None:
    class Nan(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x * float("nan")

    layer = SeedLayer("l", "vector", 4, 1)
    kernel = build_kernel("mlp", "vector", 4, 1)
    kernel.body = Nan()
    layer.set_stage(0, Stage.TRAINING)
    layer.set_kernel(0, kernel)
    x = torch.randn(2, 4, requires_grad=True)
    h = x * 2
    y = layer(h)
    expect = bits(h)
    torch.relu_(y)  # a host with ReLU(inplace=True) after the seed point keeps working
    assert bits(layer(h)) == expect


@pytest.mark.parametrize("kind", ["image", "sequence", "vector"])
def test_blending_adds_alpha_times_kernel_and_trains_the_host(kind: str) -> None:
    layer = SeedLayer("l", kind, 4, 2)
    k0, k1 = build_kernel("lora", kind, 4, 1), build_kernel("mlp", kind, 4, 2)
    for i, (k, a) in enumerate(((k0, 0.25), (k1, 0.5))):
        layer.set_stage(i, Stage.GRAFTING)
        layer.set_kernel(i, k)
        layer.set_alpha(i, a)
    x = torch.randn(shape_for(kind, 4), requires_grad=True)
    y = layer(x)
    assert torch.equal(y, x + 0.25 * k0(x) + 0.5 * k1(x))
    y.sum().backward()
    assert x.grad is not None and not torch.equal(x.grad, torch.ones_like(x))
    layer.set_alpha(0, 0.0)
    layer.set_alpha(1, 0.0)
    assert layer(x) is x  # alpha 0 in a blending stage is the identity too


def test_alpha_rules_and_dtype_casts() -> None:
    layer = SeedLayer("l", "vector", 3, 2)
    with pytest.raises(ValueError, match="L3"):
        layer.set_alpha(0, 0.5)  # DORMANT
    layer.set_stage(0, Stage.GRAFTING)
    layer.set_kernel(0, build_kernel("mlp", "vector", 3, 0))
    with pytest.raises(ValueError, match="outside"):
        layer.set_alpha(0, 1.5)
    layer.set_alpha(0, 0.1)
    layer.half()
    assert layer.alphas.dtype == torch.float64 and float(layer.alphas[0]) == 0.1
    assert layer.alpha(0) == 0.1


def test_state_dict_round_trip_restores_stages_and_alphas() -> None:
    a = SeedLayer("l", "vector", 3, 2)
    a.set_stage(1, Stage.GRAFTING)
    a.set_kernel(1, build_kernel("mlp", "vector", 3, 0))
    a.set_alpha(1, 0.3)
    b = SeedLayer("l", "vector", 3, 2)
    b.set_stage(1, Stage.GRAFTING)
    b.set_kernel(1, build_kernel("mlp", "vector", 3, 5))
    b.load_state_dict(a.state_dict())
    assert b.alpha(1) == 0.3 and b.stage(1) is Stage.GRAFTING
    x = torch.randn(2, 3)
    assert torch.equal(a(x), b(x))
    c = SeedLayer("l", "vector", 3, 2)
    with pytest.raises(RuntimeError, match="project the events first"):
        c.load_state_dict(a.state_dict(), strict=False)


def test_kernel_slots_lists_the_kernels_in_a_stage_only() -> None:
    layer = SeedLayer("l", "image", 3, 128)
    log = Log()
    log.register(layer)
    for seed in ("l/7", "l/100", "l/3"):
        log.germinate(seed, layer.blueprints[0], init_seed=1)
    log.walk("l/100", "start_training")
    log.walk("l/3", "start_training")
    Projector(layer).apply_all(log.pairs())
    assert layer.kernel_slots(Stage.TRAINING) == [3, 100]
    assert layer.kernel_slots(Stage.GERMINATED) == [7]
    assert layer.kernel_slots(Stage.DORMANT) == []  # dormant slots hold no kernel
    assert layer.seed_ids()[100] == "l/100" and len(layer.seed_ids()) == 128


_SLOT_STAGES = (Stage.DORMANT, Stage.GERMINATED, Stage.TRAINING, Stage.GRAFTING, Stage.FOSSILIZED)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 1),
            st.sampled_from(_SLOT_STAGES),
            st.sampled_from([0.0, -0.0, 0.25, 0.5, 1.0]),
            st.sampled_from([0.0, -0.0, 0.75, 1.0]),
        ),
        max_size=12,
    )
)
def test_set_slot_ends_where_the_three_setters_do(
    moves: list[tuple[int, Stage, float, float]],
) -> None:
    one, three = SeedLayer("l", "vector", 3, 2), SeedLayer("l", "vector", 3, 2)
    for layer in (one, three):
        for i in range(2):
            layer.set_kernel(i, build_kernel("mlp", "vector", 3, i))
    for index, stage, alpha, target in moves:
        if stage not in BLENDING_STAGES:
            alpha = 0.0 * alpha  # L3: only a blending stage may have a non-zero alpha
        one.set_slot(index, stage, alpha, target)
        three.set_stage(index, stage)
        three.set_alpha(index, alpha)
        three.set_blend_target(index, target)
        for name, buffer in three.state_dict().items():
            if "kernels" not in name:
                assert bits(one.state_dict()[name]) == bits(buffer), name
        assert [(i, a) for i, _, a in one._plan] == [(i, a) for i, _, a in three._plan]
        assert one.summary() == three.summary()


def test_set_slot_refuses_before_changing_anything() -> None:
    layer = SeedLayer("l", "vector", 3, 1)
    layer.set_kernel(0, build_kernel("mlp", "vector", 3, 0))
    layer.set_slot(0, Stage.GRAFTING, 0.5, 1.0)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(ValueError, match="L3"):
        layer.set_slot(0, Stage.TRAINING, 0.5, 0.25)  # alpha 0.5 outside a blending stage
    assert layer.stage(0) is Stage.GRAFTING and layer.blend_target(0) == 1.0
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())


def test_slot_buffers_written_through_numpy_stay_the_module_buffers() -> None:
    # The CPU write goes through a NumPy view of the buffer's memory: the state_dict (what a
    # fingerprint reads) must see it, also after a dtype cast replaced the buffers.
    layer = SeedLayer("l", "vector", 3, 1)
    layer.set_kernel(0, build_kernel("mlp", "vector", 3, 0))
    layer.half()
    layer.set_slot(0, Stage.GRAFTING, 0.3, 0.9)
    state = layer.state_dict()
    assert state["alphas"].dtype == torch.float64 and float(state["alphas"][0]) == 0.3
    assert float(state["blend_targets"][0]) == 0.9
    assert int(state["stages"][0]) == list(Stage).index(Stage.GRAFTING)
