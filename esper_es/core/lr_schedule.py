"""Learning-rate schedule shapes (`[train] lr_schedule`), pure: the factor at a step.

The trainer applies them (`esper_es.trainer.schedule`); see there for what they mean.
"""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "cosine", "one_cycle")
_ONE_CYCLE_WARMUP = 0.3


def lr_factor(kind: str, step: int, horizon: int, warmup_steps: int, min_factor: float) -> float:
    """The factor on every base learning rate for the optimizer step after `step` steps."""
    if kind == "constant" or horizon <= 0:
        return 1.0
    if kind == "one_cycle":
        warmup_steps = max(1, round(_ONE_CYCLE_WARMUP * horizon))
    if step < warmup_steps:
        start = min_factor if kind == "one_cycle" else 0.0
        return start + (1.0 - start) * (step + 1) / warmup_steps
    span = max(1, horizon - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))
