"""The baselines B2 and B2b divide by: a plain hand-written loop, and PyTorch Lightning.

Both train what the built-in digits task trains (same data, batch size, optimizer, learning
rate and its schedule, epochs) and measure the validation loss and accuracy after every epoch,
as `esper-es train` does. Only the training part is timed (model and data are built before).
The schedule is `[train] lr_schedule` (one-cycle by default), set before every step as a
hand-written loop would: the plain loop sets each group's rate itself, Lightning through a
per-step `LambdaLR`, both from the same pure `lr_factor` the trainer uses. Without it the
baselines would skip a per-step cost esper-es pays (about 4 % of a width-4 step).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper_es.config import RunConfig
from esper_es.core.lr_schedule import lr_factor
from esper_es.runtime.data import load_digits_split

#: What a variant's `prepare` returns: the timed part, run once.
Go = Callable[[], None]


def clocked(go: Go) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of `go()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    go()
    return time.perf_counter() - wall, time.process_time() - cpu


def digits(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The built-in task's train and validation split (`esper_es.runtime.data`)."""
    s = load_digits_split(seed)
    return s.x_train, s.y_train, s.x_val, s.y_val


def schedule(config: RunConfig, n_train: int) -> Callable[[int], float]:
    """The learning-rate factor at each step of the run, as the trainer computes it."""
    t = config.train
    horizon = t.epochs * -(-n_train // t.batch_size)
    return lambda step: lr_factor(t.lr_schedule, step, horizon, t.lr_warmup_steps, t.lr_min_factor)


def plain_loop(model: nn.Module, data: tuple[Tensor, ...], config: RunConfig, seed: int) -> Go:
    """A plain loop, ready to run: shuffle, schedule, step, and one validation pass per epoch."""
    x, y, xv, yv = data
    t = config.train
    opt = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    factor = schedule(config, n)
    scheduled = t.lr_schedule != "constant"

    def go() -> None:
        step = 0
        for _ in range(t.epochs):
            model.train()
            order = torch.randperm(n, generator=g)
            losses = []
            for i in range(0, n, t.batch_size):
                idx = order[i : i + t.batch_size]
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x[idx]), y[idx])
                loss.backward()  # type: ignore[no-untyped-call]
                if scheduled:
                    for group in opt.param_groups:
                        group["lr"] = t.lr * factor(step)
                step += 1
                opt.step()
                losses.append(loss.item())
            model.eval()
            with torch.no_grad():
                val_loss, correct = 0.0, 0
                for i in range(0, len(xv), t.val_batch_size):
                    logits = model(xv[i : i + t.val_batch_size])
                    yb = yv[i : i + t.val_batch_size]
                    val_loss += float(F.cross_entropy(logits, yb, reduction="sum"))
                    correct += int((logits.argmax(-1) == yb).sum())

    return go


class _Module:
    """A LightningModule around `model` (built lazily: Lightning is an optional extra)."""

    @staticmethod
    def make(model: nn.Module, config: RunConfig, n_train: int) -> Any:
        import pytorch_lightning as pl

        class Wrapped(pl.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def training_step(self, batch: Any, _: int) -> Tensor:
                x, y = batch
                return F.cross_entropy(self.model(x), y)

            def validation_step(self, batch: Any, _: int) -> None:
                x, y = batch
                logits = self.model(x)
                self.val = (F.cross_entropy(logits, y), (logits.argmax(-1) == y).float().mean())

            def configure_optimizers(self) -> Any:
                t = config.train
                opt = torch.optim.Adam(self.parameters(), lr=t.lr, weight_decay=t.weight_decay)
                if t.lr_schedule == "constant":
                    return opt
                per_step = torch.optim.lr_scheduler.LambdaLR(opt, schedule(config, n_train))
                return {
                    "optimizer": opt,
                    "lr_scheduler": {"scheduler": per_step, "interval": "step"},
                }

        return Wrapped()


def lightning_fit(model: nn.Module, data: tuple[Tensor, ...], config: RunConfig, seed: int) -> Go:
    """Lightning's `fit`, ready to run, with a checkpoint after every epoch and no logger."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    x, y, xv, yv = data
    t = config.train
    train = DataLoader(
        TensorDataset(x, y),
        batch_size=t.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    val = DataLoader(TensorDataset(xv, yv), batch_size=t.val_batch_size)
    module = _Module.make(model, config, len(x))

    def go() -> None:
        with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = pl.Trainer(
                max_epochs=t.epochs,
                accelerator="cpu",
                devices=1,
                logger=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                callbacks=[ModelCheckpoint(dirpath=d, save_top_k=-1, every_n_epochs=1)],
                default_root_dir=d,
            )
            trainer.fit(module, train, val)

    return go
