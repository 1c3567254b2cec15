"""Ctrl-C and progress: how a run is stopped from the keyboard and shown on a terminal.

A SIGINT handler (installed while `run` runs in the main thread) only sets the trainer's stop
flag; the loop stops at the next boundary with a snapshot, a `Checkpointed` and
`TrainingStopped(reason="interrupted")`.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from esper_es.trainer.loop import Trainer


def stop_on_sigint(trainer: Trainer) -> Any:
    """A context in which Ctrl-C (main thread only) asks `trainer` to stop at its next boundary."""

    class _Handler:
        def __enter__(self) -> None:
            self.previous: Any = None
            if threading.current_thread() is threading.main_thread():

                def handle(signum: int, frame: FrameType | None) -> None:
                    trainer._stop = True

                self.previous = signal.signal(signal.SIGINT, handle)

        def __exit__(self, *exc: object) -> None:
            if self.previous is not None:
                signal.signal(signal.SIGINT, self.previous)

    return _Handler()


def progress_bar(
    trainer: Trainer, total: int | None
) -> Callable[[int | None, float | None], None] | None:
    """When asked for: a rich progress bar on a terminal, a line per epoch off one."""
    if not trainer.progress:
        return None
    if not sys.stderr.isatty():
        return _epoch_lines(trainer, total)
    from rich.progress import Progress

    bar = Progress(transient=True)
    bar.start()
    task = bar.add_task("training", total=total)

    def update(step: int | None, loss: float | None) -> None:
        if step is None:
            bar.stop()
            return
        bar.update(task, completed=step, description=f"epoch {trainer.epoch} loss {loss:.4f}")

    return update


def _epoch_lines(trainer: Trainer, total: int | None) -> Callable[[int | None, float | None], None]:
    # Off a terminal (CI logs, `| tee`) a bar is noise; one line per finished epoch is not.
    per_epoch = trainer.steps_per_epoch()
    epochs = f"/{total // per_epoch}" if total and per_epoch else ""
    label = getattr(trainer, "progress_label", "train")

    def update(step: int | None, loss: float | None) -> None:
        if step is None or not per_epoch or step % per_epoch:
            return
        shown = "" if loss is None else f", loss {loss:.4f}"
        sys.stderr.write(
            f"esper-es {label}: epoch {step // per_epoch}{epochs} (step {step}{shown})\n"
        )
        sys.stderr.flush()

    return update
