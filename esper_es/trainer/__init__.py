"""The trainer: the training loop, the lifecycle driver, snapshots, built-in tasks, the API."""

from esper_es.trainer.api import built_in, built_in_trainer, make_trainer, train, trainer_for
from esper_es.trainer.driver import DriverSettings, LifecycleDriver, SeedProbe
from esper_es.trainer.loop import Trainer
from esper_es.trainer.result import TrainResult
from esper_es.trainer.spec import TrainSpec

__all__ = [
    "DriverSettings",
    "LifecycleDriver",
    "SeedProbe",
    "TrainResult",
    "TrainSpec",
    "Trainer",
    "built_in",
    "built_in_trainer",
    "make_trainer",
    "train",
    "trainer_for",
]
