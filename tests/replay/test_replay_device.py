"""A run's device (SPEC §11): recorded in `RunStarted`, imposed on its re-execution.

No GPU here: a CUDA run is forged (its `RunStarted.environment` says CUDA, as a GPU machine
would have recorded it) to check that a machine without CUDA refuses it, with and without
`--allow-env-mismatch`; the placement itself is checked on the `meta` device.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from replay_support import QUICK, copy_db, rewrite_payload

from esper_es.cli.main import main
from esper_es.config import RunConfig, config_from_dict
from esper_es.core import events as ev
from esper_es.errors import EnvironmentMismatch
from esper_es.nn.kernels import kernel_spec
from esper_es.replay import replay
from esper_es.trainer import built_in_trainer
from esper_es.trainer import loop as trainer_loop


def _quick(device: str = "cpu") -> RunConfig:
    config = config_from_dict(tomllib.loads(QUICK))
    return attrs.evolve(config, runtime=attrs.evolve(config.runtime, device=device))


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A run whose config says `auto`, trained here (no CUDA: on the CPU)."""
    path = tmp_path_factory.mktemp("device") / "run.db"
    result = built_in_trainer(_quick("auto"), seed=0, db_path=path).run()
    return path, result.fingerprint


def _started(path: Path) -> dict[str, Any]:
    from esper_es.store.database import RunDatabase

    with RunDatabase.open(path, readonly=True) as db:
        return dict(next(iter(db.read(types=["RunStarted"]))).payload)


def test_auto_trains_on_the_cpu_without_cuda_and_records_it(auto_run: tuple[Path, str]) -> None:
    path, fingerprint = auto_run
    started = _started(path)
    assert started["config"]["runtime"]["device"] == "auto"
    assert started["environment"]["device"] == "cpu"
    assert started["environment"]["cudnn_deterministic"] is None  # no CUDA field on a CPU run
    assert replay(path).fingerprint == fingerprint


def test_a_cuda_run_is_refused_here_with_exit_4(auto_run: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = auto_run
    forged = copy_db(path, tmp_path / "cuda.db")

    def on_a_gpu(payload: dict[str, Any]) -> None:
        payload["environment"].update(
            device="cuda", cuda_device_name="NVIDIA H200", cuda_capability="9.0",
            cudnn_version=91002, cudnn_deterministic=True, cudnn_benchmark=False,
            cudnn_allow_tf32=False, cuda_matmul_allow_tf32=False,
        )  # fmt: skip

    rewrite_payload(forged, 1, on_a_gpu)
    with pytest.raises(EnvironmentMismatch) as caught:
        replay(forged)
    assert ("device", "cuda", "cpu") in caught.value.differences
    assert main(["replay", str(forged)]) == 4
    # Accepting the differences cannot make a CUDA run train without CUDA: still exit 4.
    assert main(["replay", str(forged), "--allow-env-mismatch"]) == 4


def test_the_trainer_places_host_data_and_kernels_on_its_device(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    meta = torch.device("meta")
    monkeypatch.setattr(trainer_loop, "training_device", lambda wanted, deterministic: meta)
    trainer = built_in_trainer(_quick(), seed=0, db_path=tmp_path / "meta.db")
    assert trainer.device == meta
    assert {p.device for p in trainer.model.parameters()} == {meta}
    x, y = trainer.train_data  # type: ignore[misc]
    assert x.device == meta and y.device == meta
    assert trainer.val_data[0].device == meta  # type: ignore[index]
    assert trainer.example_input.device == meta
    assert trainer.contribution_batch[0].device == meta
    # A kernel the projector builds (on the CPU, from its seed) goes where its layer lives.
    name, layer = next(iter(trainer.layers.items()))
    blueprint = "conv3x3"
    spec = kernel_spec(blueprint, layer.shape_kind, layer.channels, 7)
    event = ev.SeedGerminated(
        seed=f"{name}/0", step=0, layer=name, blueprint=blueprint, kernel_id=spec.kernel_id,
        init_seed=7, blend_target=1.0,
    )  # fmt: skip
    assert {p.device for p in trainer.projector._build(layer, event).parameters()} == {meta}
