"""The command path: command -> `decide` -> events -> appended -> live state updated.

A thin shell around the pure decider and the run database. It keeps the live state of every
stream (seeds, layers, run) in memory, folded from the very events it appends, so the live
state is by construction what folding the log gives (L5). Commands handed in together are
decided in order against the evolving state and committed in one transaction: a step
boundary is one atomic append. A refused command appends nothing to its seed's stream
(L1); the bus records the refusal on the controller stream so the audit log shows it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from esper_es.core import commands as c
from esper_es.core import events as ev
from esper_es.core.config import LifecycleConfig
from esper_es.core.decider import Context, decide, evolve, layer_of
from esper_es.core.envelope import NewEvent, stamp
from esper_es.core.ids import CONTROLLER_STREAM, RUN_STREAM, layer_stream, seed_stream
from esper_es.core.state import LayerState, RunState, SeedState
from esper_es.errors import IllegalTransition
from esper_es.store.protocol import RunStore
from esper_es.store.records import MAIN


@attrs.frozen(slots=True)
class Outcome:
    """What became of one command: its events and their seqs, or the refusal."""

    command: c.Command
    events: tuple[ev.Event, ...] = ()
    seqs: tuple[int, ...] = ()
    refused: IllegalTransition | None = None

    @property
    def accepted(self) -> bool:
        """True when the lifecycle accepted the command."""
        return self.refused is None


class CommandBus:
    """Decides commands against live state and appends their events to a run database."""

    def __init__(
        self,
        db: RunStore,
        config: LifecycleConfig | None = None,
        *,
        branch: str = MAIN,
        record_refusals: bool = True,
    ) -> None:
        self.db = db
        self.config = config or LifecycleConfig()
        self.branch = branch
        self.record_refusals = record_refusals
        self.run: RunState | None = None
        self.layers: dict[str, LayerState] = {}
        self.seeds: dict[str, SeedState] = {}
        self.controller_version = 0
        self._load()

    def _load(self) -> None:
        """Fold the branch's history into live state (a resumed or re-opened run)."""
        for rec in self.db.read(branch=self.branch):
            self._apply(rec.event)

    def _apply(self, event: ev.Event) -> None:
        if isinstance(event, ev.SeedEvent):
            self.seeds[event.seed] = evolve(self.seed(event.seed), event)
        elif isinstance(event, ev.SeedLayerRegistered):
            self.layers[event.layer] = evolve(self.layers.get(event.layer), event)
        elif isinstance(event, ev.RunEvent):
            self.run = evolve(self.run, event)
        elif isinstance(event, ev.ControllerEvent):
            self.controller_version = evolve(self.controller_version, event)
        else:  # pragma: no cover - every event class is one of the above
            raise TypeError(f"no live state for {type(event).__name__}")

    def seed(self, seed: str) -> SeedState:
        """The live state of `seed` (DORMANT if it has no events yet)."""
        state = self.seeds.get(seed)
        return state if state is not None else SeedState.dormant(seed)

    def state_of(self, stream: str) -> Any:
        """The live state of a stream, by stream name."""
        if stream.startswith("seed:"):
            return self.seed(stream.removeprefix("seed:"))
        if stream.startswith("layer:"):
            return self.layers.get(stream.removeprefix("layer:"))
        if stream == RUN_STREAM:
            return self.run
        if stream == CONTROLLER_STREAM:
            return self.controller_version
        raise KeyError(stream)

    def version_of(self, stream: str) -> int:
        """The live version of a stream."""
        state = self.state_of(stream)
        if state is None:
            return 0
        return state if isinstance(state, int) else int(state.version)

    def execute(self, command: c.Command) -> Outcome:
        """Decide and commit one command."""
        return self.execute_all([command])[0]

    def execute_all(self, commands: Iterable[c.Command]) -> list[Outcome]:
        """Decide commands in order and commit all their events, in command order, at once."""
        staged: dict[str, Any] = {}
        versions: dict[str, int] = {}
        batches: list[tuple[str, int, tuple[NewEvent, ...]]] = []
        # Per command: its events, its refusal, and the index in `batches` of the batch that
        # holds its events (None: no events), whose result gives its seqs.
        outcomes: list[
            tuple[c.Command, tuple[ev.Event, ...], IllegalTransition | None, int | None]
        ] = []

        def current(stream: str) -> Any:
            return staged[stream] if stream in staged else self.state_of(stream)

        def stage(stream: str, command: c.Command, events: Sequence[ev.Event]) -> None:
            version = versions[stream] if stream in versions else self.version_of(stream)
            state = current(stream)
            for e in events:
                state = evolve(state, e)
            staged[stream] = state
            versions[stream] = version + len(events)
            batches.append((stream, version, stamp(command, events)))

        for command in commands:
            stream = _stream_of(command)
            try:
                events = decide(current(stream), command, self._context(command, current))
            except IllegalTransition as refusal:
                outcomes.append((command, (), refusal, None))
                if self.record_refusals and isinstance(command, c.SeedCommand):
                    refused = ev.CommandRefused(
                        command_id=command.command_id,
                        command=type(command).__name__,
                        seed=command.seed,
                        trigger=command.TRIGGER,
                        stage=refusal.state,
                        reason=refusal.reason,
                        step=command.step,
                    )
                    stage(CONTROLLER_STREAM, command, [refused])
                continue
            outcomes.append((command, events, None, len(batches) if events else None))
            stage(stream, command, events)
        results = self.db.append_batch(batches, branch=self.branch) if batches else []
        # The commit succeeded: the staged states are now the live ones.
        for stream, state in staged.items():
            self._adopt(stream, state)
        return [
            Outcome(command, events, () if index is None else results[index].seqs, refusal)
            for command, events, refusal, index in outcomes
        ]

    def _adopt(self, stream: str, state: Any) -> None:
        if stream.startswith("seed:"):
            self.seeds[stream.removeprefix("seed:")] = state
        elif stream.startswith("layer:"):
            self.layers[stream.removeprefix("layer:")] = state
        elif stream == RUN_STREAM:
            self.run = state
        else:
            self.controller_version = state

    def _context(self, command: c.Command, current: Any) -> Context:
        if isinstance(command, c.GerminateSeed):
            return Context(self.config, current(layer_stream(layer_of(command.seed))))
        return Context(self.config)


def _stream_of(command: c.Command) -> str:
    if isinstance(command, c.SeedCommand):
        return seed_stream(command.seed)
    if isinstance(command, c.RegisterSeedLayer):
        return layer_stream(command.layer)
    if isinstance(command, c.StartRun):
        return RUN_STREAM
    if isinstance(command, c.RecordFact):
        return str(command.event.stream())
    raise TypeError(f"no stream for command {type(command).__name__}")
