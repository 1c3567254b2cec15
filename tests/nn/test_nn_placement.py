"""Placing seed layers in unmodified hosts: wrapping, shape inference, clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from esper_es.errors import EsperError, UnknownBlueprint
from esper_es.nn import (
    CharTransformer,
    DigitsCNN,
    SeedLayers,
    SeedLayerSpec,
    ShapeNotFitting,
    UnknownModulePath,
    VectorMLP,
    find_seed_layers,
    place_seed_layers,
)


def test_cnn_placement_infers_image_channels_and_keeps_keys_recognisable() -> None:
    host = DigitsCNN(width=6, seed=0)
    x = torch.randn(2, 1, 8, 8)
    before = host(x)
    keys = set(host.state_dict())
    layers = place_seed_layers(host, {"layer1": SeedLayerSpec(num_seeds=2), "layer2": 1}, x)
    assert {n: (sl.shape_kind, sl.channels, sl.num_seeds) for n, sl in layers.items()} == {
        "layer1": ("image", 6, 2),
        "layer2": ("image", 6, 1),
    }
    assert isinstance(host.esper_seeds, SeedLayers)
    assert host.esper_seeds["layer1"] is layers["layer1"]
    new_keys = set(host.state_dict())
    assert {k for k in new_keys if not k.startswith("esper_seeds.")} == keys
    assert "esper_seeds.layer1.alphas" in new_keys
    assert torch.equal(host(x), before)
    assert find_seed_layers(host) == layers


def test_transformer_and_mlp_placement_including_nested_paths() -> None:
    lm = CharTransformer(vocab_size=13, d_model=8, n_heads=2, seed=0)
    idx = torch.randint(0, 13, (2, 7))
    before = lm(idx)
    layers = place_seed_layers(lm, {"blocks.0": 1, "blocks.0.mlp": 2, "blocks.1.attn": 1}, idx)
    assert all(sl.shape_kind == "sequence" and sl.channels == 8 for sl in layers.values())
    assert "attention" in layers["blocks.0"].blueprints
    assert "conv3x3" not in layers["blocks.0"].blueprints
    assert torch.equal(lm(idx), before)
    mlp = VectorMLP(in_features=5, hidden=7, seed=0)
    (layer,) = place_seed_layers(mlp, {"layer2": 1}, mlp.example_input()).values()
    assert (layer.shape_kind, layer.channels) == ("vector", 7)


def test_dry_run_leaves_rng_and_training_flags_alone() -> None:
    host = DigitsCNN(seed=0)
    host.train()
    state = torch.random.get_rng_state()
    place_seed_layers(host, {"layer1": 1}, host.example_input())
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(m.training for m in host.modules())


def test_bad_path_lists_close_matches() -> None:
    host = CharTransformer(seed=0)
    with pytest.raises(UnknownModulePath) as info:
        place_seed_layers(host, {"blocks.0.mpl": 1}, host.example_input())
    err = info.value
    assert isinstance(err, EsperError) and err.exit_code == 2
    assert "blocks.0.mlp" in err.close and "did you mean" in str(err)
    with pytest.raises(UnknownModulePath, match=r"available: .*layer1"):
        place_seed_layers(DigitsCNN(), {"zzzzzzzz": 1}, torch.zeros(1, 1, 8, 8))
    assert not find_seed_layers(host)  # nothing placed on error


def test_shapes_no_blueprint_fits_give_clear_errors() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.volume = nn.Conv3d(1, 2, 1)
            self.pair = nn.Identity()
            self.unused = nn.Linear(2, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.pair(self.volume(x))

    odd = Odd()
    x = torch.zeros(1, 1, 2, 2, 2)
    with pytest.raises(ShapeNotFitting, match=r"is not an image \(B,C,H,W\)") as info:
        place_seed_layers(odd, {"volume": 1}, x)
    assert info.value.exit_code == 2
    with pytest.raises(ShapeNotFitting, match="not called"):
        place_seed_layers(odd, {"unused": 1}, x)
    host = VectorMLP(seed=0)
    with pytest.raises(ShapeNotFitting, match="conv3x3"):
        place_seed_layers(host, {"layer1": SeedLayerSpec(1, ("conv3x3",))}, host.example_input())
    with pytest.raises(UnknownBlueprint):
        place_seed_layers(host, {"layer1": SeedLayerSpec(1, ("nope",))}, host.example_input())
    with pytest.raises(ShapeNotFitting, match="no registered blueprint fits"):
        one = nn.Sequential(nn.Linear(3, 1), nn.Linear(1, 1))
        place_seed_layers(one, {"0": SeedLayerSpec(1, ())}, torch.zeros(2, 3))


def test_a_checkpoint_of_the_plain_host_still_loads() -> None:
    plain = DigitsCNN(seed=3)
    seeded = DigitsCNN(seed=4)
    place_seed_layers(seeded, {"layer1": 1}, seeded.example_input())
    result = seeded.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith("esper_seeds.") for k in result.missing_keys)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(seeded(x), plain(x))


def test_placement_keeps_every_host_key_so_its_own_checkpoint_loads_strictly() -> None:
    """Issue 9 item 6: `layer1.0.weight` used to become `layer1.original.0.weight`."""
    host = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),
        nn.Flatten(), nn.Linear(4 * 8 * 8, 3),
    )  # fmt: skip
    pretrained = {k: v.clone() for k, v in host.state_dict().items()}
    x = torch.randn(2, 1, 8, 8)
    place_seed_layers(host, {"2": 2, "3.1": 1}, x)
    host_keys = [k for k in host.state_dict() if not k.startswith("esper_seeds.")]
    assert host_keys == list(pretrained)  # same keys, same order
    seed_keys = [k for k in host.state_dict() if k.startswith("esper_seeds.")]
    assert "esper_seeds.3__1.alphas" in seed_keys and "esper_seeds.2.stages" in seed_keys
    host[0].weight.data.add_(1.0)
    # The user's own checkpoint loads into the host with seed layers placed, strictly:
    host.load_state_dict(pretrained, strict=True)
    assert torch.equal(host[0].weight, pretrained["0.weight"])
    # ... and the placed host's state minus the seed layers loads into a plain twin.
    twin = copy.deepcopy(host)
    twin_plain = nn.Sequential(*[copy.deepcopy(m) for m in list(host)[:-1]])
    assert isinstance(host[-1], SeedLayers)  # a Sequential host lists it last (the identity)
    twin_plain.load_state_dict(
        {k: v for k, v in twin.state_dict().items() if not k.startswith("esper_seeds.")},
        strict=True,
    )
    host.eval(), twin_plain.eval()
    assert torch.equal(host(x), twin_plain(x))


def test_a_path_takes_one_seed_layer() -> None:
    host = DigitsCNN(seed=0)
    place_seed_layers(host, {"layer1": 1}, host.example_input())
    with pytest.raises(ShapeNotFitting, match="already holds"):
        place_seed_layers(host, {"layer2": 1, "layer1": 1}, host.example_input())
    assert list(find_seed_layers(host)) == ["layer1"]  # nothing half-done


def test_a_host_checkpoint_no_longer_loads_strictly_once_a_seed_holds_a_kernel() -> None:
    from esper_es.core.lifecycle import Stage
    from esper_es.nn import build_kernel

    host = DigitsCNN(width=6, seed=0)
    pretrained = {k: v.clone() for k, v in host.state_dict().items()}
    (layer,) = place_seed_layers(host, {"layer1": 1}, host.example_input()).values()
    layer.set_stage(0, Stage.GERMINATED)
    layer.set_kernel(0, build_kernel("conv3x3", "image", 6, 1))
    with pytest.raises(RuntimeError, match="Missing key"):
        host.load_state_dict(pretrained, strict=True)
    host.load_state_dict(pretrained, strict=False)  # the host's part still loads


def test_a_deep_copy_runs_its_own_seed_layers() -> None:
    from esper_es.core.lifecycle import Stage
    from esper_es.nn import build_kernel

    host = DigitsCNN(width=6, seed=0)
    place_seed_layers(host, {"layer1": 1}, host.example_input())
    twin = copy.deepcopy(host)
    layer = twin.esper_seeds["layer1"]
    assert layer is not host.esper_seeds["layer1"]
    x = host.example_input()
    before = host(x)
    for stage in (Stage.GERMINATED, Stage.TRAINING, Stage.GRAFTING):
        layer.set_stage(0, stage)
        if stage is Stage.GERMINATED:
            layer.set_kernel(0, build_kernel("conv3x3", "image", 6, 1))
    layer.set_alpha(0, 0.5)
    assert torch.equal(host(x), before)  # the original is untouched
    assert not torch.equal(twin(x), before)  # the copy's hook runs the copy's seed layer
