"""The trainer germinates kernels with `[seeds.kernel_config]` and records the config."""

from __future__ import annotations

import copy
from pathlib import Path

import attrs
import pytest

from esper_es.config import RunConfig, load_config
from esper_es.core import events as ev
from esper_es.errors import ConfigError
from esper_es.nn.projector import Projector
from esper_es.store.database import RunDatabase
from esper_es.trainer import built_in_trainer
from esper_es.trainer.tasks import build_task


def test_the_default_config_makes_seeds_wider_than_the_host() -> None:
    cfg = RunConfig().seeds.kernel_config
    assert cfg == {"conv3x3": {"expansion": 4.0}, "mlp": {"expansion": 8.0}}
    assert RunConfig().host.width * cfg["conv3x3"]["expansion"] > RunConfig().host.width


def test_germinations_record_their_config_and_replay_from_the_log_alone(
    quick_config: Path, tmp_path: Path
) -> None:
    base = load_config(quick_config)
    config = attrs.evolve(
        base, seeds=attrs.evolve(base.seeds, kernel_config={"conv3x3": {"expansion": 3}})
    )
    db_path = tmp_path / "run.db"
    trainer = built_in_trainer(config, seed=4, db_path=db_path)
    host0 = copy.deepcopy(build_task(config, 4).host)
    trainer.run()
    with RunDatabase.open(db_path, readonly=True) as db:
        records = list(db.read())
    germinated = [r.event for r in records if isinstance(r.event, ev.SeedGerminated)]
    assert germinated, "the quick config germinates seeds"
    for e in germinated:
        # Resolved, never `{}`: the override (its int became a float) or the defaults.
        want = {"expansion": 3.0} if e.blueprint == "conv3x3" else None
        assert e.config and (want is None or e.config == want)
    assert any(e.blueprint == "conv3x3" for e in germinated)

    # A fresh host and the log alone (strict kernel ids, no kernel specs) rebuild each kernel.
    proj = Projector(host0)
    assert proj.apply_all((r.seq, r.event) for r in records) == len(records)
    held = {
        k.kernel_id: k
        for layer in proj.layers.values()
        for k in (layer.kernel(i) for i in range(layer.num_seeds))
        if k is not None
    }
    live = {
        k.kernel_id: k
        for layer in trainer.layers.values()
        for k in (layer.kernel(i) for i in range(layer.num_seeds))
        if k is not None
    }
    assert held and held.keys() == live.keys()
    for kid, kernel in held.items():
        shapes = [p.shape for p in kernel.parameters()]
        assert shapes == [p.shape for p in live[kid].parameters()]
        if kernel.blueprint == "conv3x3":
            assert kernel.body.conv.out_channels == 3 * trainer.layers["layer1"].channels


def test_an_unknown_kernel_config_key_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    base = RunConfig()
    config = attrs.evolve(
        base, seeds=attrs.evolve(base.seeds, kernel_config={"conv3x3": {"width": 16}})
    )
    db_path = tmp_path / "run.db"
    with pytest.raises(ConfigError) as info:
        built_in_trainer(config, seed=0, db_path=db_path)
    assert info.value.key == "seeds.kernel_config.conv3x3.width"
    assert info.value.exit_code == 2 and not db_path.exists()


def test_the_api_keeps_kernel_configs_when_placing_seed_layers(tmp_path: Path) -> None:
    """`seed_layers=` changes only where seeds go, not the configured kernels."""
    import torch

    from esper_es.config import RunConfig
    from esper_es.nn.hosts import DigitsCNN
    from esper_es.trainer.api import make_trainer

    config = RunConfig()
    x, y = torch.zeros(8, 1, 8, 8), torch.zeros(8, dtype=torch.long)
    trainer = make_trainer(
        DigitsCNN(width=4, seed=0),
        train_data=(x, y),
        val_data=(x, y),
        loss_fn=lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]),
        example_input=x[:2],
        db_path=tmp_path / "api.db",
        seed_layers={"layer2": 3},
        config=config,
    )
    assert trainer.config.seeds.layers == {"layer2": 3}
    assert trainer.config.seeds.kernel_config == config.seeds.kernel_config
    assert trainer.config.seeds.kernel_config  # the defaults are not empty
