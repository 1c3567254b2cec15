"""A seed point's hook is on its module only while the seed layer holds a kernel (B1)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from esper_es.core.lifecycle import Stage
from esper_es.nn import DigitsCNN, SeedLayerSpec, place_seed_layers
from esper_es.nn.kernels import build_kernel
from esper_es.nn.placement import SeedHook, find_seed_layers
from esper_es.nn.seed_layer import SeedLayer


def _ours(module: nn.Module) -> list[SeedHook]:
    return [h for h in module._forward_hooks.values() if isinstance(h, SeedHook)]


def _model() -> tuple[DigitsCNN, SeedLayer, Tensor]:
    model = DigitsCNN(seed=0)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    layers = place_seed_layers(model, {"layer1": SeedLayerSpec(num_seeds=2)}, x)
    return model, layers["layer1"], x


def _blend(layer: SeedLayer, index: int, alpha: float) -> None:
    layer.set_kernel(index, build_kernel("conv3x3", "image", layer.channels, 7 + index))
    layer.set_stage(index, Stage.GRAFTING)
    layer.set_alpha(index, alpha)


def test_the_hook_is_on_only_while_the_layer_holds_a_kernel() -> None:
    model, layer, x = _model()
    assert _ours(model.layer1) == []  # dormant: torch's plain call path
    plain = model(x)
    layer.set_kernel(0, build_kernel("conv3x3", "image", layer.channels, 7))
    assert len(_ours(model.layer1)) == 1
    assert torch.equal(model(x), plain)  # GERMINATED: loaded, adds nothing (L7)
    layer.set_kernel(1, build_kernel("lora", "image", layer.channels, 8))
    layer.set_kernel(0, None)
    assert len(_ours(model.layer1)) == 1  # one kernel left
    layer.set_kernel(1, None)
    assert _ours(model.layer1) == []


def test_a_blending_seed_changes_the_output_through_the_hook() -> None:
    model, layer, x = _model()
    plain = model(x)
    _blend(layer, 0, 0.5)
    assert not torch.equal(model(x), plain)
    layer.set_kernel(0, None)
    assert torch.equal(model(x), plain)


def test_the_hook_goes_back_before_hooks_registered_after_it() -> None:
    """A user's hook added after placement sees the seeds' output, as it did before."""
    model, layer, x = _model()
    seen: list[Tensor] = []
    model.layer1.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    _blend(layer, 0, 0.5)
    hooks = list(model.layer1._forward_hooks.values())
    assert isinstance(hooks[0], SeedHook) and len(hooks) == 2
    model(x)
    assert torch.equal(seen[-1], layer(model.layer1[1](model.layer1[0](model.stem(x)))))


def test_a_copied_model_moves_its_own_hook() -> None:
    model, _, x = _model()
    twin = copy.deepcopy(model)
    twin_layer = find_seed_layers(twin)["layer1"]  # the copy's own seed layer
    _blend(twin_layer, 0, 0.5)
    assert len(_ours(twin.layer1)) == 1 and _ours(model.layer1) == []
    assert not torch.equal(twin(x), model(x))
