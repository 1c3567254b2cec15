"""Helpers for the orchestration tests: a real run database and command bus, seeds walked
into chosen stages through real commands."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from esper_es.command_bus import CommandBus
from esper_es.core import commands as c
from esper_es.core.config import LifecycleConfig
from esper_es.core.lifecycle import Stage
from esper_es.orchestrator import SeedOrchestrator
from esper_es.store.database import RunDatabase

#: Gates that never block, so a test can walk a seed anywhere in a few commands.
OPEN_GATES = LifecycleConfig(
    min_training_steps=0, min_stabilization_steps=0, embargo_steps=0, min_improvement=-1.0
)
KINDS = ("conv3x3", "depthwise", "norm", "se_attention")

#: The lifecycle path from DORMANT to each stage (the germination comes first).
PATH: dict[Stage, tuple[str, ...]] = {
    Stage.GERMINATED: (),
    Stage.TRAINING: ("start_training",),
    Stage.GRAFTING: ("start_training", "start_grafting"),
    Stage.STABILIZATION: ("start_training", "start_grafting", "adjust_blend", "stabilize"),
    Stage.EVALUATING: ("start_training", "start_grafting", "adjust_blend", "stabilize", "evaluate"),
    Stage.FINE_TUNING: (
        "start_training", "start_grafting", "adjust_blend", "stabilize", "evaluate", "fine_tune",
    ),
    Stage.FOSSILIZED: (
        "start_training", "start_grafting", "adjust_blend", "stabilize", "evaluate", "fine_tune",
        "fossilize",
    ),
    Stage.CULLED: ("start_training", "cull"),
    Stage.EMBARGOED: ("start_training", "cull", "embargo"),
}  # fmt: skip


def fake_germination(seed: str, blueprint: str, command_id: str) -> tuple[str, int]:
    """A torch-free germination: a kernel id naming what it was made from."""
    return f"k-{blueprint}-{command_id}", 7


class Run:
    """A run database with a started run and registered layers, and its command bus."""

    def __init__(self, path: Path, layers: dict[str, int], kinds: tuple[str, ...] = KINDS) -> None:
        self.db = RunDatabase.create(path, "run-orch")
        self.bus = CommandBus(self.db, OPEN_GATES)
        self._ids = (f"setup-{i}" for i in itertools.count(1))
        cmds: list[c.Command] = [c.StartRun(command_id=self.id(), run_id="run-orch", master_seed=3)]
        for name, n in layers.items():
            cmds.append(
                c.RegisterSeedLayer(
                    command_id=self.id(),
                    layer=name,
                    shape_kind="image",
                    channels=4,
                    num_seeds=n,
                    blueprints=kinds,
                )
            )
        assert all(o.accepted for o in self.bus.execute_all(cmds))

    def id(self) -> str:
        """A fresh setup command id."""
        return next(self._ids)

    def put(self, seed: str, stage: Stage, blueprint: str = "conv3x3", step: int = 0) -> None:
        """Walk a dormant `seed` into `stage` through real commands."""
        cmds: list[c.SeedCommand] = [
            c.GerminateSeed(
                command_id=self.id(), seed=seed, step=step, blueprint=blueprint,
                kernel_id=f"k-setup-{seed}", init_seed=1,
            )
        ]  # fmt: skip
        extra: dict[str, dict[str, Any]] = {
            "start_grafting": {"improvement": 0.1},
            "adjust_blend": {"alpha": 1.0},
            "fine_tune": {"contribution": 0.1},
            "fossilize": {"contribution": 0.1},
        }
        for trigger in PATH[stage]:
            cls = c.COMMAND_FOR_TRIGGER[trigger]
            cmds.append(cls(command_id=self.id(), seed=seed, step=step, **extra.get(trigger, {})))
        outcomes = self.bus.execute_all(cmds)
        assert all(o.accepted for o in outcomes), [o.refused for o in outcomes]
        assert self.bus.seed(seed).stage is stage

    def orchestrator(self, **kw: Any) -> SeedOrchestrator:
        """An orchestrator on this run with the torch-free germination."""
        kw.setdefault("germination", fake_germination)
        return SeedOrchestrator(self.bus, master_seed=3, **kw)

    def close(self) -> None:
        """Close the database."""
        self.db.close()
