"""Kernel configs: width knobs, typed resolution, and kernels rebuilt from the log alone."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from nn_support import Log

from esper_es.core import commands as c
from esper_es.core import events as ev
from esper_es.core.upcasting import upcast
from esper_es.errors import ConfigError
from esper_es.nn import build_kernel, kernel_id_for, kernel_spec
from esper_es.nn.blueprints import get_blueprint
from esper_es.nn.errors import KernelMismatch, ShapeNotFitting
from esper_es.nn.hosts import DigitsCNN
from esper_es.nn.kernels import check_kernel_config
from esper_es.nn.placement import place_seed_layers
from esper_es.nn.projector import Projector


def n_params(module: Any) -> int:
    """Parameter count."""
    return sum(p.numel() for p in module.parameters())


def test_width_knobs_make_a_kernel_wider_than_its_host() -> None:
    conv = build_kernel("conv3x3", "image", 4, 1, {"expansion": 8.0}).body
    assert (conv.conv.out_channels, conv.out.in_channels, conv.out.out_channels) == (32, 32, 4)
    assert n_params(conv) == 73 * 32 + 4
    assert build_kernel("conv3x3", "image", 4, 1).body.conv.out_channels == 4  # default x1
    mlp = build_kernel("mlp", "image", 4, 1, {"expansion": 6.0}).body
    assert mlp.body.out_features == 24 and mlp.out.in_features == 24
    assert build_kernel("lora", "vector", 8, 1, {"rank": 3}).body.body.out_features == 3


def test_a_width_that_makes_no_kernel_does_not_fit() -> None:
    for name, cfg in [("conv3x3", {"expansion": 0.0}), ("mlp", {"expansion": -1.0}),
                      ("lora", {"rank": 0}), ("se_attention", {"reduction": 0})]:  # fmt: skip
        kind = "image"
        assert not get_blueprint(name).fits(kind, 4, cfg)
        with pytest.raises(ShapeNotFitting):
            kernel_spec(name, kind, 4, 0, cfg)


def test_values_take_their_defaults_type_so_equal_configs_hash_alike() -> None:
    bp = get_blueprint("conv3x3")
    resolved = bp.resolve_config({"expansion": 8})
    assert resolved == {"expansion": 8.0} and type(resolved["expansion"]) is float
    assert kernel_id_for("conv3x3", "image", 4, 5, {"expansion": 8}) == kernel_id_for(
        "conv3x3", "image", 4, 5, {"expansion": 8.0}
    )
    assert kernel_id_for("conv3x3", "image", 4, 5, {"expansion": 8.0}) != kernel_id_for(
        "conv3x3", "image", 4, 5
    )
    for bad in ("8", True, None, float("nan")):
        with pytest.raises(ConfigError, match=r"conv3x3\.expansion"):
            bp.resolve_config({"expansion": bad})
    with pytest.raises(ConfigError, match="expected int"):
        get_blueprint("lora").resolve_config({"rank": 2.5})
    with pytest.raises(ConfigError, match="expected bool"):
        get_blueprint("attention").resolve_config({"causal": 1})


def test_check_kernel_config_names_the_bad_key() -> None:
    check_kernel_config({"conv3x3": {"expansion": 4}, "lora": {}}, "seeds.kernel_config")
    with pytest.raises(ConfigError) as info:
        check_kernel_config({"conv3x3": {"hidden": 16}}, "seeds.kernel_config")
    assert info.value.key == "seeds.kernel_config.conv3x3.hidden"
    assert "expansion" in info.value.problem
    with pytest.raises(ConfigError) as unknown:
        check_kernel_config({"conv9x9": {}}, "seeds.kernel_config")
    assert unknown.value.key == "seeds.kernel_config.conv9x9" and "conv3x3" in str(unknown.value)


def digits_log() -> tuple[DigitsCNN, Log]:
    """A width-4 digits host with one seed layer after layer2, registered in a fresh log."""
    model = DigitsCNN(width=4, seed=0)
    layers = place_seed_layers(model, {"layer2": 2}, model.example_input())
    log = Log()
    log.register(layers["layer2"])
    return model, log


def test_the_projector_builds_the_kernel_the_event_configures_strictly() -> None:
    model, log = digits_log()
    cfg = {"expansion": 8.0}
    spec = kernel_spec("conv3x3", "image", 4, 9, cfg)
    log.command(c.GerminateSeed, "layer2/0", blueprint="conv3x3", kernel_id=spec.kernel_id,
                init_seed=9, config=cfg)  # fmt: skip
    (_, event) = log.pairs()[-1]
    assert isinstance(event, ev.SeedGerminated) and event.config == cfg
    fresh = copy.deepcopy(model)
    proj = Projector(model)  # no kernel_specs, strict kernel ids
    proj.apply_all(log.pairs())
    kernel = proj.layers["layer2"].kernel(0)
    assert kernel is not None and kernel.kernel_id == spec.kernel_id
    assert kernel.body.conv.out_channels == 32
    want = build_kernel("conv3x3", "image", 4, 9, cfg).state_dict()
    assert all(v.equal(want[k]) for k, v in kernel.state_dict().items())
    # The same log replayed into another copy of the host gives the same kernel.
    again = Projector(fresh)
    again.apply_all(log.pairs())
    replayed = again.layers["layer2"].kernel(0)
    assert replayed is not None and replayed.kernel_id == spec.kernel_id


def test_a_config_that_does_not_give_the_recorded_kernel_id_is_refused() -> None:
    model, log = digits_log()
    default_id = kernel_id_for("conv3x3", "image", 4, 9)
    log.command(c.GerminateSeed, "layer2/0", blueprint="conv3x3", kernel_id=default_id,
                init_seed=9, config={"expansion": 8.0})  # fmt: skip
    with pytest.raises(KernelMismatch) as info:
        Projector(model).apply_all(log.pairs())
    assert default_id in str(info.value) and "config" in str(info.value)


def test_a_v2_germination_upcast_to_v3_builds_the_default_kernel_strictly() -> None:
    model, log = digits_log()
    kid = kernel_id_for("mlp", "image", 4, 21)
    v2 = {"seed": "layer2/1", "step": 0, "layer": "layer2", "blueprint": "mlp", "kernel_id": kid,
          "init_seed": 21, "blend_target": 0.5}  # fmt: skip
    version, payload = upcast("SeedGerminated", 2, v2)
    event = ev.from_payload("SeedGerminated", payload)
    assert version == 3 and isinstance(event, ev.SeedGerminated) and event.config == {}
    proj = Projector(model)
    proj.apply_all([*log.pairs(), (2, event)])
    kernel = proj.layers["layer2"].kernel(1)
    assert kernel is not None and kernel.kernel_id == kid
    assert kernel.body.body.out_features == 8  # mlp's default expansion 2.0 on 4 channels
