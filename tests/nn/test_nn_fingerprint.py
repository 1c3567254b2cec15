"""Fingerprints (SPEC §7) and the architecture manifest."""

from __future__ import annotations

import hashlib
import json

import torch
from nn_support import Log
from torch import nn

from esper_es.nn import (
    DigitsCNN,
    Projector,
    architecture_manifest,
    model_fingerprint,
    optimizer_fingerprint,
    place_seed_layers,
    state_dict_fingerprint,
)


def test_fingerprint_matches_a_hand_computed_sha256() -> None:
    m = nn.Linear(2, 1)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, -0.0]]))
        m.bias.copy_(torch.tensor([0.5]))
    m.register_buffer("count", torch.tensor(3, dtype=torch.int64))
    h = hashlib.sha256()
    # sorted keys: bias, count, weight
    h.update(b"bias\0float32\x001\0" + bytes.fromhex("0000003f"))
    h.update(b"count\0int64\0\0" + (3).to_bytes(8, "little"))
    h.update(b"weight\0float32\x001,2\0" + bytes.fromhex("0000803f") + bytes.fromhex("00000080"))
    assert model_fingerprint(m) == "sha256:" + h.hexdigest()


def test_fingerprint_is_order_independent_and_sees_every_bit() -> None:
    a = {"x": torch.zeros(2), "y": torch.ones(1, 2, dtype=torch.float64)}
    b = {"y": a["y"], "x": a["x"]}
    assert state_dict_fingerprint(a) == state_dict_fingerprint(b)
    c = {"x": torch.tensor([0.0, -0.0]), "y": a["y"]}
    assert state_dict_fingerprint(a) != state_dict_fingerprint(c)
    non_contiguous = {"x": torch.arange(4.0).reshape(2, 2).t()}
    contiguous = {"x": non_contiguous["x"].contiguous()}
    assert state_dict_fingerprint(non_contiguous) == state_dict_fingerprint(contiguous)
    assert state_dict_fingerprint({"b": torch.tensor([1.0], dtype=torch.bfloat16)}).startswith(
        "sha256:"
    )


def test_alphas_and_stages_are_part_of_the_fingerprint() -> None:
    model = DigitsCNN(seed=0)
    layers = place_seed_layers(model, {"layer1": 1}, model.example_input())
    log = Log()
    proj = Projector(model)
    proj.apply_all(log.register(layers["layer1"]))
    seen = {model_fingerprint(model)}
    log.germinate("layer1/0", "lora", init_seed=1)
    for trigger in ("start_training", "start_grafting"):
        log.walk("layer1/0", trigger)
        proj.apply_all(log.pairs())
        seen.add(model_fingerprint(model))
    log.blend("layer1/0", 0.25)
    proj.apply_all(log.pairs())
    seen.add(model_fingerprint(model))
    assert len(seen) == 4


def test_optimizer_fingerprint_tracks_state_and_hyperparameters() -> None:
    torch.manual_seed(0)
    m = nn.Linear(3, 2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    empty = optimizer_fingerprint(opt)
    assert empty == optimizer_fingerprint(opt)
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    stepped = optimizer_fingerprint(opt)
    assert stepped != empty
    opt.param_groups[0]["lr"] = 2e-3
    assert optimizer_fingerprint(opt) != stepped


def test_manifest_is_json_able_and_carries_the_fingerprint() -> None:
    model = DigitsCNN(seed=0)
    place_seed_layers(model, {"layer2": 2}, model.example_input())
    manifest = architecture_manifest(model)
    assert json.loads(json.dumps(manifest)) == manifest
    assert manifest["fingerprint"] == model_fingerprint(model)
    assert [s["stage"] for s in manifest["layers"]["layer2"]["seeds"]] == ["DORMANT", "DORMANT"]


def test_fingerprint_with_digests_matches_the_separate_computations() -> None:
    """One pass gives the SPEC §7 fingerprint and each entry's own, as computed separately."""
    from esper_es.nn.fingerprint import fingerprint_with_digests

    state = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.tensor([-0.0, 1.5])}
    whole, each = fingerprint_with_digests(state)
    assert whole == state_dict_fingerprint(state)
    assert each == {k: state_dict_fingerprint({k: t}) for k, t in state.items()}
