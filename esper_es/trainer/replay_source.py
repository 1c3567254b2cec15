"""How a re-executing trainer is driven: where it stands, and where its boundaries come from.

The trainer knows the protocol; `esper_es.replay.session.Session` implements it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import attrs

if TYPE_CHECKING:
    from esper_es.trainer.loop import Trainer


@attrs.frozen
class Position:
    """Where a restored trainer stands in its epoch (see `Trainer.train_from`)."""

    epoch: int
    index: int
    """Batches of `epoch` already trained."""
    losses: tuple[float, ...] = ()
    """Their losses (the epoch's mean training loss needs them)."""
    pending: str = "none"
    """What of the boundary at the current step is still to do: `none`, `lifecycle` (the
    driver, controller and orchestrator) or `recorded` (the log's remaining events of it)."""


class ReplaySource(Protocol):
    """Where a re-executing trainer's boundaries come from (implemented in `esper_es.replay`).

    `recorded`: apply the log's events at each boundary (`apply_boundary`); otherwise the
    boundary's commands are computed live and the bus matches them against the log until it
    is `exhausted`, then `go_live` swaps in a writing bus (resume) or `finished` ends the run.
    """

    recorded: bool

    def apply_boundary(self, trainer: Trainer) -> bool:
        """Apply the log's events of the trainer's current step; True once nothing is left."""
        ...

    def before_boundary(self, trainer: Trainer) -> None:
        """Called before a re-computed boundary builds its commands."""
        ...

    def after_boundary(self, trainer: Trainer) -> None:
        """Called after a re-computed boundary committed: apply what it does not re-issue."""
        ...

    def exhausted(self) -> bool:
        """No recorded event is left to match."""
        ...

    def finished(self) -> bool:
        """The re-execution reached its end (nothing left, and not continuing live)."""
        ...

    def go_live(self, trainer: Trainer) -> None:
        """Switch the trainer to live commits (resume), or refuse."""
        ...
