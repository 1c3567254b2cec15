"""The learning-rate schedule (`[train] lr_schedule`): a pure function of the step.

Every param group's learning rate is its base rate (`lr` for the host's groups, `seed_lr` for
each kernel's, or whatever a custom optimizer factory set) times `lr_factor(step)`, set before
each optimizer step. Being a function of the step and the config alone, it needs no state of
its own: a resumed or replayed run sets the same rates at the same steps. The horizon is
`epochs x steps per epoch` of the recorded config; a run continued past it keeps the last
factor.

- `constant`: factor 1 (the rates as configured).
- `cosine`: linear warm-up over `lr_warmup_steps`, then half a cosine from 1 down to
  `lr_min_factor` at the horizon.
- `one_cycle`: the same, with the warm-up taking the first 30 % of the horizon (warm-up from
  `lr_min_factor`), the shape of Smith's one-cycle policy.
"""

from __future__ import annotations

import torch

from esper_es.core.lr_schedule import LR_SCHEDULES, lr_factor

__all__ = ["LR_SCHEDULES", "apply_lr", "lr_factor"]

_BASE = "base_lr"


def apply_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Set each group's rate to its base rate times `factor` (the base is its rate when first seen).

    The base rate is kept in the group itself, so it travels with the optimizer's state dict
    into snapshots and back on resume.
    """
    for group in optimizer.param_groups:
        base = group.setdefault(_BASE, group["lr"])
        group["lr"] = base * factor
