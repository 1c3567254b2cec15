"""Decision outcomes: what each adaptation decision's changes turned out to contribute.

A pure fold over the log. `OutcomeTracker.observe(event)` sees every event in seq order (the
trainer hooks it to its projector, so live runs, resumes, replays and rollbacks all feed it the
same sequence); `drain(step)` returns the `DecisionOutcomeMeasured` events that became due,
which the trainer records at its next boundary. Nothing but the log drives it, so a replay
records the same outcome at the same boundary.

Which seeds a decision changed is read from the events between its `AdaptationDecided` and its
`AdaptationPlanned` (the orchestrator commits a decision's commands contiguously in between):

- `SeedGerminated` → **added**: resolves when the kernel fossilizes (its recorded
  counterfactual contribution) or leaves (0: a culled kernel adds nothing to the model).
- `SeedCulled` / `SeedRolledBack` / `SeedCancelled` → **removed**: minus the contribution the
  decision read in its telemetry (removing a harmful seed pays); resolved at once.
- `BlendTargetSet` → **retargeted**: the contribution at fossilization minus the one read.

A decision whose every part resolved is due; one that changed nothing is due with 0 (it did
not pay). Outcomes still open when the run ends are simply not recorded (unresolved).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from esper_es.core import events as ev

_LEAVES: Mapping[type[ev.Event], str] = {
    ev.SeedCulled: "culled",
    ev.SeedRolledBack: "rolled_back",
    ev.SeedCancelled: "cancelled",
}


@attrs.define
class _Part:
    seed: str
    role: str
    blueprint: str | None
    read: float
    fate: str | None = None
    contribution: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "role": self.role,
            "blueprint": self.blueprint,
            "fate": self.fate,
            "contribution": float(self.contribution or 0.0),
        }


@attrs.define
class _Open:
    decided: ev.AdaptationDecided
    parts: list[_Part] = attrs.field(factory=list)
    planned: bool = False

    def resolved(self) -> bool:
        return self.planned and all(p.fate is not None for p in self.parts)


def read_contributions(telemetry: Mapping[str, Any]) -> dict[str, float]:
    """Seed id -> the contribution a decision's telemetry showed (measured seeds only)."""
    out: dict[str, float] = {}
    for layer in telemetry.get("layers", ()) or ():
        for s in layer.get("seeds", ()) or ():
            value = s.get("contribution")
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[str(s.get("seed"))] = float(value)
    return out


class OutcomeTracker:
    """Folds the log into per-decision outcomes (see the module docstring)."""

    def __init__(self, enabled: bool = True) -> None:
        #: False: observe nothing and record nothing (a run whose config predates outcomes).
        self.enabled = enabled
        self._current: _Open | None = None
        self._open: dict[str, _Open] = {}
        self._by_seed: dict[str, list[_Part]] = {}
        self._due: list[str] = []
        self._recorded: set[str] = set()

    def observe(self, event: ev.Event) -> None:
        """Fold one event (in seq order)."""
        if not self.enabled:
            return
        if isinstance(event, ev.AdaptationDecided):
            self._current = _Open(event)
            self._open[event.decision_id] = self._current
        elif isinstance(event, ev.AdaptationPlanned):
            opened = self._open.get(event.decision_id)
            if opened is not None:
                opened.planned = True
                self._check(event.decision_id)
            self._current = None
        elif isinstance(event, ev.DecisionOutcomeMeasured):
            # Already recorded (a resume or replay saw the log's own outcome first).
            self._recorded.add(event.decision_id)
            self._open.pop(event.decision_id, None)
            if event.decision_id in self._due:
                self._due.remove(event.decision_id)
        elif isinstance(event, ev.SeedEvent):
            self._seed_event(event)

    def _seed_event(self, event: ev.SeedEvent) -> None:
        cur = self._current
        if cur is not None:
            read = read_contributions(cur.decided.telemetry).get(event.seed, 0.0)
            if isinstance(event, ev.SeedGerminated):
                self._track(cur, _Part(event.seed, "added", event.blueprint, 0.0))
                return
            if type(event) in _LEAVES:
                cur.parts.append(_Part(event.seed, "removed", None, read, "removed", -read))
                self._settle_seed(event.seed, _LEAVES[type(event)], 0.0)
                return
            if isinstance(event, ev.BlendTargetSet):
                self._track(cur, _Part(event.seed, "retargeted", None, read))
                return
        if isinstance(event, ev.SeedFossilized):
            self._settle_seed(event.seed, "fossilized", float(event.contribution))
        elif type(event) in _LEAVES:
            self._settle_seed(event.seed, _LEAVES[type(event)], 0.0)

    def _track(self, opened: _Open, part: _Part) -> None:
        opened.parts.append(part)
        self._by_seed.setdefault(part.seed, []).append(part)

    def _settle_seed(self, seed: str, fate: str, contribution: float) -> None:
        parts = self._by_seed.pop(seed, [])
        for part in parts:
            part.fate = fate
            part.contribution = contribution - part.read
        for decision_id, opened in list(self._open.items()):
            if any(q is p for q in opened.parts for p in parts):
                self._check(decision_id)

    def _check(self, decision_id: str) -> None:
        opened = self._open.get(decision_id)
        if opened is None or decision_id in self._recorded or decision_id in self._due:
            return
        if opened.resolved():
            self._due.append(decision_id)

    @property
    def any_due(self) -> bool:
        """Whether `drain` would return any outcome."""
        return bool(self._due)

    def drain(self, step: int) -> list[ev.DecisionOutcomeMeasured]:
        """The outcomes due (resolved since the last drain), in the order they resolved."""
        out = []
        for decision_id in self._due:
            opened = self._open.pop(decision_id)
            self._recorded.add(decision_id)
            d = opened.decided
            total = sum(float(p.contribution or 0.0) for p in opened.parts)
            out.append(
                ev.DecisionOutcomeMeasured(
                    decision_id=decision_id,
                    layer=d.layer,
                    strategy=d.strategy,
                    source=d.source,
                    decided_step=d.step,
                    step=step,
                    contribution=total,
                    paid=total > 0.0,
                    parts=[p.to_dict() for p in opened.parts],
                )
            )
        self._due = []
        return out

    def pending(self) -> list[str]:
        """Ids of decisions whose outcome is not yet resolved (in decision order)."""
        return [k for k in self._open if k not in self._due]
