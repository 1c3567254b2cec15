"""The blueprint library and kernels: every blueprint on every shape it declares, registration,
errors, deterministic init from a dedicated generator."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nn_support import Log, shape_for
from torch import nn

from esper_es.core.canonical import canonical_json
from esper_es.core.ids import kernel_id
from esper_es.errors import ConfigError, UnknownBlueprint
from esper_es.nn import (
    Projector,
    VectorMLP,
    build_kernel,
    derive_init_seed,
    fitting_blueprints,
    get_blueprint,
    kernel_id_for,
    known_blueprints,
    place_seed_layers,
    register_blueprint,
    unregister_blueprint,
)
from esper_es.nn.blueprints import BUILTIN_BLUEPRINTS
from esper_es.nn.errors import ShapeNotFitting

REQUIRED = {"conv3x3", "depthwise", "se_attention", "mlp", "lora", "attention", "norm"}
PAIRS = [
    (name, kind) for name in BUILTIN_BLUEPRINTS for kind in sorted(get_blueprint(name).shape_kinds)
]


def test_the_required_blueprints_exist_with_versions_and_configs() -> None:
    assert set(known_blueprints()) >= REQUIRED
    for name in REQUIRED:
        bp = get_blueprint(name)
        assert bp.version >= 1 and isinstance(bp.config, Mapping) and bp.shape_kinds
        canonical_json(dict(bp.config))  # configs are canonical-JSON-able, so ids are stable


@pytest.mark.parametrize(("name", "kind"), PAIRS)
def test_every_blueprint_on_every_shape_it_declares(name: str, kind: str) -> None:
    k = build_kernel(name, kind, 4, init_seed=3)
    x = torch.randn(shape_for(kind, 4), requires_grad=True)
    y = k(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # The output layer is small but not zero: the kernel barely moves the host, yet learns.
    out_grads = [p.grad for p in k.body.out.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in out_grads)
    assert any(float(g.abs().sum()) > 0 for g in out_grads if g is not None)
    assert float(y.detach().abs().max()) < float(x.detach().abs().max())


@settings(max_examples=30, deadline=None)
@given(
    pair=st.sampled_from(PAIRS),
    channels=st.integers(min_value=2, max_value=9),
    batch=st.integers(min_value=1, max_value=3),
    extent=st.integers(min_value=1, max_value=5),
    init_seed=st.integers(min_value=0, max_value=2**63 - 1),
)
def test_random_shapes_keep_their_shape(
    pair: tuple[str, str], channels: int, batch: int, extent: int, init_seed: int
) -> None:
    name, kind = pair
    if not get_blueprint(name).fits(kind, channels):
        with pytest.raises(ShapeNotFitting):
            build_kernel(name, kind, channels, init_seed)
        return
    k = build_kernel(name, kind, channels, init_seed)
    x = torch.randn(shape_for(kind, channels, batch, extent))
    y = k(x)
    assert y.shape == x.shape
    y.sum().backward()


def test_fitting_blueprints_by_shape_kind() -> None:
    assert set(fitting_blueprints("image", 4)) >= {"conv3x3", "depthwise", "se_attention", "lora"}
    assert "attention" in fitting_blueprints("sequence", 4)
    assert "conv3x3" not in fitting_blueprints("vector", 4)
    assert "attention" not in fitting_blueprints("image", 4)
    assert "norm" not in fitting_blueprints("vector", 1)  # normalising one channel gives zeros


def test_unknown_blueprint_lists_the_known_ones() -> None:
    with pytest.raises(UnknownBlueprint) as info:
        build_kernel("transformer-xl", "vector", 4, 0)
    assert info.value.exit_code == 2
    assert "conv3x3" in str(info.value) and "lora" in str(info.value)


def test_unfitting_shape_and_unknown_config_key() -> None:
    with pytest.raises(ShapeNotFitting, match="conv3x3"):
        build_kernel("conv3x3", "vector", 4, 0)
    with pytest.raises(ConfigError, match="rank"):
        build_kernel("lora", "vector", 4, 0, config={"rnak": 2})


@pytest.fixture
def scaled_blueprint() -> Iterator[str]:
    class Scale(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.empty(channels))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.gain

    kinds = ("vector", "sequence")

    @register_blueprint("test_scale", version=2, shape_kinds=kinds, config={"k": 1})
    def make(shape_kind: str, channels: int, config: Mapping[str, Any]) -> nn.Module:
        """Per-channel gain."""
        return Scale(channels)

    yield "test_scale"
    unregister_blueprint("test_scale")


def test_user_registered_blueprint(scaled_blueprint: str) -> None:
    bp = get_blueprint(scaled_blueprint)
    assert bp.version == 2 and bp.description == "Per-channel gain."
    assert scaled_blueprint in fitting_blueprints("vector", 3)
    assert scaled_blueprint not in fitting_blueprints("image", 3)
    a = build_kernel(scaled_blueprint, "vector", 3, 11)
    b = build_kernel(scaled_blueprint, "vector", 3, 11)
    assert torch.equal(a.body.gain, b.body.gain)  # custom parameters come from the generator too
    assert a(torch.ones(2, 3)).shape == (2, 3)
    with pytest.raises(ConfigError, match="already registered"):
        register_blueprint(scaled_blueprint)(lambda s, c, cfg: nn.Identity())


def test_kernel_id_is_the_core_content_hash() -> None:
    k = build_kernel("lora", "sequence", 8, 42, config={"rank": 2})
    expected = kernel_id("lora", 1, '{"rank":2}', "sequence:8", 42)
    assert k.kernel_id == expected == kernel_id_for("lora", "sequence", 8, 42, {"rank": 2})
    assert kernel_id_for("lora", "sequence", 8, 43) != expected


@pytest.mark.parametrize(("name", "kind"), PAIRS)
def test_kernel_init_uses_no_global_rng_and_is_bit_identical(name: str, kind: str) -> None:
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    a = build_kernel(name, kind, 6, init_seed=99)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(999)  # a different global stream must not matter
    b = build_kernel(name, kind, 6, init_seed=99)
    c = build_kernel(name, kind, 6, init_seed=100)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].numpy().tobytes() == sb[key].numpy().tobytes()
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_derive_init_seed() -> None:
    s = derive_init_seed(7, "cmd-1/0")
    assert s == derive_init_seed(7, "cmd-1/0")
    assert 0 <= s < 2**63
    assert len({derive_init_seed(m, k) for m in range(5) for k in ("a", "b", "c")}) == 15


def test_user_blueprint_germinates_through_the_log(scaled_blueprint: str) -> None:
    model = VectorMLP(in_features=4, hidden=3, seed=0)
    (layer,) = place_seed_layers(model, {"layer1": 1}, model.example_input()).values()
    assert scaled_blueprint in layer.blueprints
    log = Log()
    log.register(layer)
    log.germinate("layer1/0", scaled_blueprint, init_seed=4)
    log.walk("layer1/0", "start_training", "start_grafting")
    log.blend("layer1/0", 0.5)
    Projector(model).apply_all(log.pairs())
    kernel = layer.kernel(0)
    assert kernel is not None and kernel.blueprint == scaled_blueprint
    x = torch.randn(2, 4)
    h = model.layer1.forward(x)  # `forward` itself skips the seed layer's hook
    assert torch.equal(model.layer1(x), h + 0.5 * (h * kernel.body.gain))
