"""The trainer: the training loop, the lifecycle driver, snapshots, built-in tasks, the API."""

from esper_es.trainer.api import built_in, built_in_trainer, make_trainer, train
from esper_es.trainer.driver import DriverSettings, LifecycleDriver, SeedProbe
from esper_es.trainer.loop import Trainer, TrainResult

__all__ = [
    "DriverSettings",
    "LifecycleDriver",
    "SeedProbe",
    "TrainResult",
    "Trainer",
    "built_in",
    "built_in_trainer",
    "make_trainer",
    "train",
]
