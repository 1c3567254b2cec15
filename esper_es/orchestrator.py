"""The seed orchestrator: adaptation decisions become recorded, planned, committed commands.

Every modification takes effect at a step boundary, so replay is deterministic (SPEC §4):

- With a trainer attached (`attach`), `submit` queues a decision; at the next boundary the
  trainer calls `commands_for_boundary(step, stats)`, which turns each queued decision into
  `RecordFact(AdaptationDecided)`, the plan's seed commands and `RecordFact(AdaptationPlanned)`,
  commits them (with its lifecycle commands) in one `bus.execute_all`, projects the new events,
  then calls `settle(outcomes)` so each decision's ticket resolves to `(success, details)`.
- With no trainer attached, `apply_architecture_modification` is itself the boundary: it plans,
  commits with `bus.execute_all`, and projects the new events into the model and optimizer
  through the `Projector` it was given.

Every command serving a decision carries `correlation_id = decision_id`, as do the events it
causes, and `AdaptationDecided`/`AdaptationPlanned` carry `decision_id`; so `history` can show,
for any seed, the decision (and its telemetry) that created it.

`details` (the second element of every result):

| key | meaning |
|---|---|
| `strategy` | the strategy that ran (`diversify`, `replace`, `specialize`, `ensemble`) |
| `decision_id`, `layer`, `adaptation_type`, `step` | the decision and the boundary it ran at |
| `plan` | the planned seed commands, as dicts (type, command_id, seed, fields) |
| `commands` | each planned command's outcome: `command_id`, `type`, `seed`, `accepted`, `seqs` |
| `refused` | `{"command", "command_id", "seed", "stage", "reason"}` per refused command |
| `seqs` | the seqs of every event written for the decision (decision, plan, seed events) |
| `notes` | the strategy's notes (what it could not do and why) |
| `projected` | immediate path only: whether the events were projected into a model |

`success` is True when at least one planned command was accepted and none was refused. An
empty plan (nothing the lifecycle allows) is recorded and returns False.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from esper_es.command_bus import CommandBus, Outcome
from esper_es.core import commands as c
from esper_es.core import events as ev
from esper_es.core.decider import Context, decide, evolve, layer_of
from esper_es.core.decision_checks import check_against_layer
from esper_es.core.decisions import AdaptationDecision, SeedStats, telemetry_digest
from esper_es.core.ids import IdSource, derive_seed
from esper_es.core.state import LayerState, SeedState
from esper_es.core.strategies import Germination, Plan, layer_for, plan
from esper_es.errors import IllegalTransition

if TYPE_CHECKING:
    from esper_es.nn.projector import Projector

Result = tuple[bool, dict[str, Any]]
SOURCES = ("controller", "user")
Arrange = Callable[
    [Sequence["ModificationTicket"], int],
    tuple[list["ModificationTicket"], list["ModificationTicket"]],
]


class ModificationTicket:
    """A submitted decision; resolves to `(success, details)` once its boundary committed it."""

    def __init__(
        self,
        decision: AdaptationDecision,
        source: str,
        telemetry: Mapping[str, Any],
    ) -> None:
        self.decision = decision
        self.source = source
        self.telemetry = dict(telemetry)
        self.future: concurrent.futures.Future[Result] = concurrent.futures.Future()
        self.plan: Plan | None = None
        self.step: int | None = None
        self.fact_ids: tuple[str, ...] = ()

    @property
    def decision_id(self) -> str:
        """The decision's id (assigned on submit)."""
        assert self.decision.decision_id is not None
        return self.decision.decision_id

    def done(self) -> bool:
        """True once the ticket has resolved (or failed)."""
        return self.future.done()

    def result(self, timeout: float | None = None) -> Result:
        """Block until resolved; `(success, details)`."""
        return self.future.result(timeout)

    async def wait(self) -> Result:
        """Await the resolution from an event loop."""
        return await asyncio.wrap_future(self.future)


def default_germination(
    bus: CommandBus,
    master_seed: int,
    kernel_config: Mapping[str, Mapping[str, Any]] | None = None,
) -> Germination:
    """Kernel ids, init seeds and configs from `esper_es.nn.kernels` (imports torch on first use).

    `kernel_config` maps a blueprint name to its config overrides (the run config's
    `[seeds.kernel_config]`); the germination records the resolved config.
    """
    overrides = {name: dict(cfg) for name, cfg in (kernel_config or {}).items()}

    def germination(seed: str, blueprint: str, command_id: str) -> tuple[str, int, dict[str, Any]]:
        from esper_es.nn.kernels import derive_init_seed, kernel_spec

        layer = bus.layers[layer_of(seed)]
        init_seed = derive_init_seed(master_seed, command_id)
        spec = kernel_spec(
            blueprint, layer.shape_kind, layer.channels, init_seed, overrides.get(blueprint)
        )
        return spec.kernel_id, init_seed, dict(spec.config)

    return germination


def default_ranking(layer: LayerState) -> Sequence[str]:
    """The layer's fitting blueprints in name order (issue 6 ranks them by library statistics)."""
    return sorted(layer.blueprints)


class SeedOrchestrator:
    """Turns adaptation decisions into plans of commands, committed at step boundaries."""

    def __init__(
        self,
        bus: CommandBus,
        *,
        master_seed: int,
        germination: Germination | None = None,
        ranking: Callable[[LayerState], Sequence[str]] | None = None,
        ids: IdSource | None = None,
        projector: Projector | None = None,
    ) -> None:
        self.bus = bus
        self.master_seed = master_seed
        self.germination = germination or default_germination(bus, master_seed)
        self.ranking = ranking or default_ranking
        self.ids = ids or IdSource(random.Random(derive_seed(master_seed, "ids", "orchestrator")))
        self.projector = projector
        self.trainer: Any = None
        self.stats: dict[str, SeedStats] = {}
        self.step = 0
        self._lock = threading.Lock()
        self._queue: list[ModificationTicket] = []
        self._in_flight: dict[str, ModificationTicket] = {}
        self._boundary_thread: int | None = None
        #: Re-executing a log (`esper_es.replay.decisions`): puts a boundary's queue in its
        #: recorded order and returns `(to plan now, to keep queued)`.
        self.arrange: Arrange | None = None

    # --- the trainer's side ---------------------------------------------------------------

    def attach(self, trainer: Any) -> None:
        """A trainer now drives boundaries: modifications wait for the next one."""
        self.trainer = trainer

    def detach(self) -> None:
        """No trainer any more: modifications apply immediately."""
        self.trainer = None

    def pending(self) -> int:
        """Decisions queued for the next boundary."""
        with self._lock:
            return len(self._queue)

    def submit(
        self,
        decision: AdaptationDecision,
        *,
        source: str = "user",
        telemetry: Mapping[str, Any] | None = None,
    ) -> ModificationTicket:
        """Queue a decision for the next step boundary; raises at once if it cannot be planned."""
        ticket = self.ticket_for(decision, source, telemetry)
        self.enqueue(ticket)
        return ticket

    def ticket_for(
        self, decision: AdaptationDecision, source: str, telemetry: Mapping[str, Any] | None
    ) -> ModificationTicket:
        """A ticket for `decision` (an id drawn if it has none), not queued yet."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        return self._ticket(decision, source, telemetry)

    def enqueue(self, ticket: ModificationTicket) -> None:
        """Queue `ticket` for the next boundary."""
        with self._lock:
            self._queue.append(ticket)

    def queued(self) -> list[ModificationTicket]:
        """The tickets queued for the next boundary, in order."""
        with self._lock:
            return list(self._queue)

    def _ticket(
        self, decision: AdaptationDecision, source: str, telemetry: Mapping[str, Any] | None
    ) -> ModificationTicket:
        # Checked in full here, not at the boundary: the caller gets the error, nothing queued.
        decision.strategy()
        check_against_layer(decision, layer_for(decision, self.bus.layers))
        # The ticket keeps its own copy: a caller changing its dict later changes nothing.
        decision = attrs.evolve(
            decision,
            parameters=copy.deepcopy(dict(decision.parameters)),
            decision_id=self.ids() if decision.decision_id is None else decision.decision_id,
        )
        return ModificationTicket(decision, source, telemetry or {})

    def commands_for_boundary(
        self, step: int, stats: Mapping[str, SeedStats] | None = None
    ) -> list[c.Command]:
        """The commands of every queued decision, planned against the bus's live state."""
        self._boundary_thread = threading.get_ident()
        with self._lock:
            queue, self._queue = self._queue, []
            if self.arrange is not None:
                queue, self._queue = self.arrange(queue, step)
        return self._plan_tickets(queue, step, stats)

    def quiet_boundary(self, step: int) -> bool:
        """Note a boundary with nothing queued, as `commands_for_boundary` would; False (and
        nothing noted) when a ticket is queued or a replay arranges the queue: plan those.

        A trainer asks this first where nothing else can act (no seed has events): most
        boundaries of a run, each ~5 µs cheaper than planning an empty queue (B2).
        """
        if self.arrange is not None:
            return False
        with self._lock:
            if self._queue:
                return False
            self._boundary_thread = threading.get_ident()
        self.step = max(self.step, step)
        self.stats = {}
        return True

    def _plan_tickets(
        self,
        queue: Sequence[ModificationTicket],
        step: int,
        stats: Mapping[str, SeedStats] | None,
    ) -> list[c.Command]:
        self.step = max(self.step, step)
        if stats is not None:
            self.stats = dict(stats)
        out: list[c.Command] = []
        # Later decisions of the same boundary plan against the earlier ones' effects.
        seeds: dict[str, SeedState] = {}
        for ticket in queue:
            try:
                out.extend(self._commands(ticket, step, seeds))
            except Exception as exc:  # a bad decision fails its own ticket, not the boundary
                ticket.future.set_exception(exc)
                continue
            self._in_flight[ticket.decision_id] = ticket
        return out

    def settle(self, outcomes: Sequence[Outcome]) -> None:
        """Resolve the tickets whose commands these outcomes (of `bus.execute_all`) report."""
        by_decision: dict[str, list[Outcome]] = {}
        for o in outcomes:
            corr = o.command.correlation_id
            if corr is not None and corr in self._in_flight:
                by_decision.setdefault(corr, []).append(o)
        for decision_id, outs in by_decision.items():
            ticket = self._in_flight.pop(decision_id)
            if not ticket.future.done():
                ticket.future.set_result(self._result(ticket, outs))

    def abort(self, error: BaseException) -> None:
        """Fail every ticket whose boundary did not commit (e.g. `execute_all` raised)."""
        tickets = list(self._in_flight.values())
        self._in_flight.clear()
        for t in tickets:
            if not t.future.done():
                t.future.set_exception(error)

    # --- the call shape users know (SPEC §4) ----------------------------------------------

    async def apply_architecture_modification(
        self,
        model: Any,
        decision: AdaptationDecision,
        *,
        stats: Mapping[str, SeedStats] | None = None,
        step: int | None = None,
    ) -> Result:
        """Apply `decision`: at the attached trainer's next boundary, or now if none is attached."""
        if self.trainer is not None:
            return await self.submit(decision).wait()
        return self._apply_now(model, decision, stats, step)

    def apply_architecture_modification_sync(
        self,
        model: Any,
        decision: AdaptationDecision,
        *,
        timeout: float | None = 60.0,
        stats: Mapping[str, SeedStats] | None = None,
        step: int | None = None,
    ) -> Result:
        """Synchronous twin; with a trainer attached it blocks until the next boundary.

        Never call it from the training thread itself while a trainer is attached (it would
        wait for a boundary that thread can no longer reach): there, `submit` the decision and
        let the boundary apply it. Such a call raises RuntimeError instead of deadlocking.
        """
        if self.trainer is None:
            return self._apply_now(model, decision, stats, step)
        if self._boundary_thread == threading.get_ident():
            raise RuntimeError(
                "apply_architecture_modification_sync called from the training thread; "
                "use orchestrator.submit(decision) there and let the step boundary apply it"
            )
        return self.submit(decision).result(timeout)

    def _apply_now(
        self,
        model: Any,
        decision: AdaptationDecision,
        stats: Mapping[str, SeedStats] | None,
        step: int | None,
    ) -> Result:
        if step is None:
            step = max([self.step, *(s.last_step for s in self.bus.seeds.values())])
        # This call is its own boundary: the decision is planned alone, queue untouched.
        ticket = self._ticket(decision, "user", None)
        commands = self._plan_tickets([ticket], step, stats)
        if ticket.done():  # planning failed: re-raise its error
            ticket.result()
        try:
            outcomes = self.bus.execute_all(commands)
        except BaseException as exc:
            self.abort(exc)
            raise
        self.settle(outcomes)
        success, details = ticket.result(0)
        details["projected"] = self._project(model)
        return success, details

    def _project(self, model: Any) -> bool:
        proj = self.projector
        if proj is None:
            return False
        if model is not None and proj.model is not model:
            raise ValueError("the model passed is not the one this orchestrator's projector drives")
        pairs = (
            (r.seq, r.event)
            for r in self.bus.db.read(branch=self.bus.branch, from_seq=proj.last_seq + 1)
        )
        proj.apply_all(pairs)
        return True

    # --- planning -------------------------------------------------------------------------

    def _commands(
        self, ticket: ModificationTicket, step: int, seeds: dict[str, SeedState]
    ) -> list[c.Command]:
        d = ticket.decision
        layer = layer_for(d, self.bus.layers)
        live = {sid: seeds.get(sid) or self.bus.seed(sid) for sid in layer.seed_ids()}
        the_plan = plan(
            d,
            layer=layer,
            seeds=live,
            stats=self.stats,
            candidates=list(self.ranking(layer)),
            step=step,
            new_id=self.ids,
            germination=self.germination,
        )
        ticket.plan, ticket.step = the_plan, step
        for cmd in the_plan.commands:  # what the plan will leave, for later decisions
            state = live[cmd.seed]
            try:
                for e in decide(state, cmd, Context(self.bus.config, layer)):
                    state = evolve(state, e)
            except IllegalTransition:
                continue
            live[cmd.seed] = seeds[cmd.seed] = state
        telemetry = ticket.telemetry
        digest = d.telemetry_digest or (telemetry_digest(telemetry) if telemetry else None)
        decided = ev.AdaptationDecided(
            decision_id=ticket.decision_id,
            layer=layer.name,
            adaptation_type=d.adaptation_type,
            parameters=dict(d.parameters),
            reason=d.reason,
            strategy=the_plan.strategy.value,
            source=ticket.source,
            telemetry_digest=digest,
            telemetry=telemetry,
            step=step,
        )
        planned = ev.AdaptationPlanned(
            decision_id=ticket.decision_id,
            strategy=the_plan.strategy.value,
            commands=the_plan.describe(),
            notes=the_plan.notes,
            step=step,
        )
        corr = ticket.decision_id
        first = c.RecordFact(command_id=self.ids(), step=step, correlation_id=corr, event=decided)
        last = c.RecordFact(command_id=self.ids(), step=step, correlation_id=corr, event=planned)
        ticket.fact_ids = (first.command_id, last.command_id)
        return [first, *the_plan.commands, last]

    def _result(self, ticket: ModificationTicket, outcomes: Sequence[Outcome]) -> Result:
        the_plan = ticket.plan
        assert the_plan is not None
        by_id = {o.command.command_id: o for o in outcomes}
        commands: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []
        seqs: list[int] = []
        for cmd in the_plan.commands:
            o = by_id.get(cmd.command_id)
            accepted = o is not None and o.accepted
            commands.append(
                {
                    "command_id": cmd.command_id,
                    "type": type(cmd).__name__,
                    "seed": cmd.seed,
                    "accepted": accepted,
                    "seqs": list(o.seqs) if o is not None else [],
                }
            )
            if o is not None and o.refused is not None:
                refused.append(
                    {
                        "command": type(cmd).__name__,
                        "command_id": cmd.command_id,
                        "seed": cmd.seed,
                        "stage": o.refused.state,
                        "reason": o.refused.reason,
                    }
                )
            elif o is None:
                refused.append(
                    {
                        "command": type(cmd).__name__,
                        "command_id": cmd.command_id,
                        "seed": cmd.seed,
                        "stage": None,
                        "reason": "not executed at the boundary",
                    }
                )
        for o in outcomes:
            seqs.extend(o.seqs)
        success = bool(commands) and not refused and any(x["accepted"] for x in commands)
        d = ticket.decision
        return success, {
            "strategy": the_plan.strategy.value,
            "decision_id": ticket.decision_id,
            "layer": d.layer_name,
            "adaptation_type": d.adaptation_type,
            "step": ticket.step,
            "plan": the_plan.describe(),
            "commands": commands,
            "refused": refused,
            "seqs": sorted(seqs),
            "notes": the_plan.notes,
        }
