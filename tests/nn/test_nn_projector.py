"""The projector: events -> live model and optimizer, in order, exactly once (L3, L4, L5)."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nn_support import Log
from torch import nn

from esper_es.core import commands as c
from esper_es.core import events as ev
from esper_es.core.lifecycle import BLENDING_STAGES, KERNEL_STAGES, Stage
from esper_es.errors import EsperError, IllegalTransition, InconsistentHistory
from esper_es.nn import (
    DigitsCNN,
    KernelMismatch,
    ProjectionError,
    Projector,
    VectorMLP,
    architecture_manifest,
    build_kernel,
    kernel_spec,
    model_fingerprint,
    place_seed_layers,
)


def cnn_run() -> tuple[nn.Module, torch.optim.Optimizer, Log, Projector]:
    model = DigitsCNN(seed=1)
    layers = place_seed_layers(model, {"layer1": 2, "layer2": 1}, model.example_input())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    log = Log()
    for layer in layers.values():
        log.register(layer)
    log.germinate("layer1/0", "conv3x3", init_seed=10)
    log.walk("layer1/0", "start_training", "start_grafting")
    log.blend("layer1/0", 0.4)
    log.germinate("layer1/1", "se_attention", init_seed=11)
    log.walk("layer1/1", "start_training")
    log.germinate("layer2/0", "depthwise", init_seed=12)
    proj = Projector(model, opt)
    proj.apply_all(log.pairs())
    return model, opt, log, proj


def test_fresh_host_plus_events_reproduces_the_live_model() -> None:
    live, _, log, _ = cnn_run()
    fresh = DigitsCNN(seed=1)  # no placement: SeedLayerRegistered places the layers itself
    Projector(fresh, torch.optim.Adam(fresh.parameters())).apply_all(log.pairs())
    assert architecture_manifest(fresh) == architecture_manifest(live)
    assert model_fingerprint(fresh) == model_fingerprint(live)
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(fresh(x), live(x))
    assert architecture_manifest(live)["layers"]["layer1"]["seeds"][0] == {
        "seed": "layer1/0",
        "stage": "GRAFTING",
        "kernel_id": log.seeds["layer1/0"].kernel_id,
        "blueprint": "conv3x3",
        "alpha": 0.4,
        "blend_target": 1.0,
    }


def test_projecting_twice_changes_nothing() -> None:
    model, opt, log, proj = cnn_run()
    before = (model_fingerprint(model), len(opt.param_groups), repr(model))
    assert proj.apply_all(log.pairs()) == 0
    assert proj.apply_all(log.pairs()[:3]) == 0
    assert (model_fingerprint(model), len(opt.param_groups), repr(model)) == before


def test_a_gap_in_seqs_raises() -> None:
    model = VectorMLP(seed=0)
    layers = place_seed_layers(model, {"layer1": 1}, model.example_input())
    log = Log()
    log.register(layers["layer1"])
    log.germinate("layer1/0", "mlp")
    log.walk("layer1/0", "start_training")
    proj = Projector(model)
    pairs = log.pairs()
    proj.apply(*pairs[0])
    with pytest.raises(ProjectionError, match="gap") as info:
        proj.apply(*pairs[2])
    assert info.value.exit_code == 3
    assert proj.last_seq == 1


def test_events_it_does_not_project_still_advance_the_position() -> None:
    proj = Projector(VectorMLP(seed=0))
    started = ev.RunStarted(run_id="r", master_seed=1, config={})
    assert proj.apply(1, started) and proj.last_seq == 1


def test_an_event_that_cannot_follow_is_refused_like_replay_would() -> None:
    model = VectorMLP(seed=0)
    layers = place_seed_layers(model, {"layer1": 1}, model.example_input())
    proj = Projector(model)
    log = Log()
    proj.apply_all(log.register(layers["layer1"]))
    with pytest.raises(InconsistentHistory):
        proj.apply(2, ev.SeedTrainingStarted(seed="layer1/0", step=0))
    with pytest.raises(ProjectionError, match="not placed"):
        proj.apply(2, ev.SeedTrainingStarted(seed="nowhere/0", step=0))


def test_kernel_id_mismatch_is_a_clear_error_unless_the_spec_is_registered() -> None:
    model = VectorMLP(seed=0)
    layers = place_seed_layers(model, {"layer1": 1}, model.example_input())
    log = Log()
    log.register(layers["layer1"])
    spec = kernel_spec("lora", "vector", 32, 5, {"rank": 2})
    log.command(
        c.GerminateSeed, "layer1/0", blueprint="lora", kernel_id=spec.kernel_id, init_seed=5
    )
    with pytest.raises(KernelMismatch) as info:
        Projector(copy.deepcopy(model)).apply_all(log.pairs())
    assert isinstance(info.value, EsperError) and spec.kernel_id in str(info.value)
    proj = Projector(model, kernel_specs={spec.kernel_id: spec})
    proj.apply_all(log.pairs())
    kernel = proj.layers["layer1"].kernel(0)
    assert kernel is not None and kernel.kernel_id == spec.kernel_id
    assert kernel.body.body.out_features == 2  # the registered config (rank 2) was used


@pytest.mark.parametrize(
    ("prefix", "ending"),
    [
        ((), "cancel"),
        (("start_training",), "cancel"),
        (("start_training",), "cull"),
        (("start_training", "start_grafting"), "roll_back"),
        (("start_training", "start_grafting", "stabilize", "evaluate"), "cull"),
    ],
)
def test_l4_freeing_a_kernel_frees_parameters_groups_and_optimizer_state(
    prefix: tuple[str, ...], ending: str
) -> None:
    model = DigitsCNN(seed=2)
    layers = place_seed_layers(model, {"layer1": 1}, model.example_input())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    host_groups = len(opt.param_groups)
    log = Log()
    proj = Projector(model, opt)
    proj.apply_all(log.register(layers["layer1"]))
    log.germinate("layer1/0", "conv3x3", init_seed=3)
    for trigger in prefix:
        log.walk("layer1/0", trigger)
        if trigger == "start_grafting":
            log.blend("layer1/0", 1.0)
    proj.apply_all(log.pairs())
    kernel = layers["layer1"].kernel(0)
    assert kernel is not None
    kernel_params = {id(p) for p in kernel.parameters()}
    group = proj.param_group("layer1/0")
    assert group is not None and {id(p) for p in group["params"]} == kernel_params
    for _ in range(2):  # give the kernel optimizer state
        opt.zero_grad()
        model(torch.randn(5, 1, 8, 8)).logsumexp(1).sum().backward()
        opt.step()
    assert bool(kernel_params & {id(p) for p in opt.state}) == bool(prefix)
    ref = weakref.ref(kernel)
    del kernel, group
    log.walk("layer1/0", ending)
    proj.apply_all(log.pairs())
    gc.collect()
    assert ref() is None, "the freed kernel module is still referenced somewhere"
    assert len(opt.param_groups) == host_groups and proj.param_group("layer1/0") is None
    assert not kernel_params & {id(p) for p in model.parameters()}
    assert not kernel_params & {id(p) for g in opt.param_groups for p in g["params"]}
    assert not kernel_params & {id(p) for p in opt.state}
    opt.zero_grad()
    model(torch.randn(5, 1, 8, 8)).sum().backward()
    opt.step()  # the optimizer still works after losing a group


TRIGGERS = ["germinate", "start_training", "cancel", "start_grafting", "adjust_blend",
            "set_blend_target", "stabilize", "evaluate", "fine_tune", "fossilize", "cull",
            "roll_back", "embargo", "release"]  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(
    moves=st.lists(
        st.tuples(
            st.integers(0, 2),
            st.sampled_from(TRIGGERS),
            st.sampled_from([0.0, 0.3, 1.0]),
            st.sampled_from(["mlp", "lora", "norm"]),
        ),
        max_size=40,
    )
)
def test_l3_l4_l5_live_seeds_match_the_folded_log_after_any_walk(
    moves: list[tuple[int, str, float, str]],
) -> None:
    model = VectorMLP(in_features=6, hidden=4, seed=0)
    layers = place_seed_layers(model, {"layer1": 3}, model.example_input())
    layer = layers["layer1"]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    host_params = {id(p) for p in model.parameters()}
    log = Log()
    proj = Projector(model, opt)
    proj.apply_all(log.register(layer))
    for index, trigger, value, blueprint in moves:
        seed = f"layer1/{index}"
        try:
            if trigger == "germinate":
                pairs = log.germinate(seed, blueprint, init_seed=index)
            elif trigger == "adjust_blend":
                pairs = log.command(c.AdjustBlend, seed, alpha=value)
            elif trigger == "set_blend_target":
                pairs = log.command(c.SetBlendTarget, seed, target=value)
            else:
                log.walk(seed, trigger)
                pairs = log.pairs()
        except IllegalTransition:
            continue
        proj.apply_all(pairs)
        for i, sid in enumerate(layer.seed_ids()):
            folded = log.seeds.get(sid)
            stage = folded.stage if folded else Stage.DORMANT
            assert layer.stage(i) is stage  # L5
            assert layer.alpha(i) == (folded.alpha if folded else 0.0)
            assert 0.0 <= layer.alpha(i) <= 1.0  # L3
            if stage not in BLENDING_STAGES:
                assert layer.alpha(i) == 0.0
            has_kernel = layer.kernel(i) is not None  # L4
            assert has_kernel == (stage in KERNEL_STAGES)
            assert (proj.param_group(sid) is not None) == has_kernel
        live = {id(p) for p in model.parameters()}
        grouped = {id(p) for g in opt.param_groups for p in g["params"]}
        assert live == grouped and host_params <= live


def test_projected_kernel_weights_come_from_the_event_alone() -> None:
    _, _, _, proj = cnn_run()
    k = proj.layers["layer1"].kernel(1)
    assert k is not None
    again = build_kernel("se_attention", "image", 4, 11).state_dict()
    assert all(torch.equal(a, again[key]) for key, a in k.state_dict().items())
