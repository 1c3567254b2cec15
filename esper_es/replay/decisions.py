"""Re-executing a boundary: the recorded decisions that did not come from the controller.

In recomputed mode the controller runs again and its decisions are matched against the log,
but a decision a user made (the seed call shape from another thread, `Trainer.submit` from a
hook) has no code to re-run it: the log is its only source. So at each re-executed boundary
the recorded `AdaptationDecided` events whose `source` is not the built-in controller are
submitted again, with their recorded ids, in their recorded order among the controller's, and
the normal matching checks the plan and commands they produce.

Ids: a decision's id is drawn from the orchestrator's id source when it is submitted, which
for a user is before the boundary (during the step), and for the controller inside it. A
re-submitted decision takes the id it was recorded with and moves the source's counter to it,
at the point of the boundary where the original run drew it: the user decisions recorded
before the controller's at `before_boundary`, the ones recorded after (submitted while the
controller ran) when the queue is planned. Then every later id comes out as recorded.

Live user code that runs again while the log is re-executed (a hook in the trainer factory
repeating the same decisions) is not doubled: its queued ticket stands for the next recorded
user decision of that boundary and takes its recorded content; a ticket with no recorded
counterpart at this boundary waits for the next one (or for the live part of a resume).
"""

from __future__ import annotations

from collections.abc import Sequence

from esper_es.core import events as ev
from esper_es.core.decisions import AdaptationDecision
from esper_es.core.envelope import RecordedEvent
from esper_es.core.ids import IdSource
from esper_es.orchestrator import ModificationTicket, SeedOrchestrator
from esper_es.replay.log import RecordedLog, step_of

CONTROLLER = "controller"


def decision_of(event: ev.AdaptationDecided) -> AdaptationDecision:
    """The decision a recorded `AdaptationDecided` was made from, with its recorded id."""
    return AdaptationDecision(
        layer_name=event.layer,
        adaptation_type=event.adaptation_type,
        parameters=dict(event.parameters),
        reason=event.reason,
        telemetry_digest=event.telemetry_digest,
        decision_id=event.decision_id,
    )


def _advance(ids: IdSource, decision_id: str) -> None:
    prefix, _, count = decision_id.rpartition("-")
    if prefix == ids.prefix and count.isdigit():
        ids._count = max(ids._count, int(count))


class RecordedDecisions:
    """Re-submits a re-executed boundary's recorded non-controller decisions (module doc)."""

    def __init__(self, log: RecordedLog) -> None:
        self.log = log
        #: Seqs of the recorded decisions already handed to the orchestrator.
        self.submitted: set[int] = set()
        self.tickets: dict[str, ModificationTicket] = {}

    def _decided(self, step: int) -> list[tuple[RecordedEvent, ev.AdaptationDecided]]:
        """The `AdaptationDecided` of the boundary at `step` still ahead of the cursor."""
        out = []
        for rec in self.log.events[self.log.pos :]:
            s = step_of(rec)
            if s > step:
                break
            if s == step and isinstance(rec.event, ev.AdaptationDecided):
                out.append((rec, rec.event))
        return out

    def _submit(
        self, orchestrator: SeedOrchestrator, rec: RecordedEvent, event: ev.AdaptationDecided
    ) -> ModificationTicket:
        self.submitted.add(rec.seq)
        _advance(orchestrator.ids, event.decision_id)
        return orchestrator.ticket_for(decision_of(event), event.source, event.telemetry)

    def before_boundary(self, orchestrator: SeedOrchestrator, step: int) -> None:
        """Queue the user decisions recorded before any controller decision at `step`."""
        live = sum(1 for t in orchestrator.queued() if t.source != CONTROLLER)
        for rec, event in self._decided(step):
            if event.source == CONTROLLER:
                break
            if rec.seq in self.submitted:
                continue
            if live > 0:  # a live ticket of user code stands for it (see `arrange`)
                live -= 1
                continue
            ticket = self._submit(orchestrator, rec, event)
            self.tickets[event.decision_id] = ticket
            orchestrator.enqueue(ticket)

    def arrange(
        self, orchestrator: SeedOrchestrator, queue: Sequence[ModificationTicket], step: int
    ) -> tuple[list[ModificationTicket], list[ModificationTicket]]:
        """The queue in recorded order, and the live user tickets deferred to a later boundary."""
        controller = [t for t in queue if t.source == CONTROLLER]
        mine = {id(t) for t in self.tickets.values()}
        live = [t for t in queue if t.source != CONTROLLER and id(t) not in mine]
        out: list[ModificationTicket] = []
        for rec, event in self._decided(step):
            if event.source == CONTROLLER:
                if controller:
                    out.append(controller.pop(0))
                continue
            ticket = self.tickets.pop(event.decision_id, None)
            if ticket is None and live:
                ticket = live.pop(0)
                ticket.decision = decision_of(event)
                self.submitted.add(rec.seq)
            if ticket is None:
                ticket = self._submit(orchestrator, rec, event)
            out.append(ticket)
        # Anything left is not in the log at this boundary: the matching reports a controller
        # decision the log lacks; live user decisions wait for a boundary that has them.
        out += controller + list(self.tickets.values())
        self.tickets.clear()
        return out, live
