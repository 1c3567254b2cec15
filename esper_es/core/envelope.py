"""Envelopes: an event with the ids that place it in the causal chain, before and after storage."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from esper_es.core.commands import Command
from esper_es.core.events import Event
from esper_es.core.ids import event_id


@attrs.frozen(slots=True)
class NewEvent:
    """An event about to be appended, with its id and what caused it."""

    event: Event
    event_id: str
    causation_id: str | None = None
    correlation_id: str | None = None


def stamp(command: Command, events: Iterable[Event]) -> tuple[NewEvent, ...]:
    """Give a command's events deterministic ids, caused by it, correlated to its decision."""
    return tuple(
        NewEvent(e, event_id(command.command_id, i), command.command_id, command.correlation_id)
        for i, e in enumerate(events)
    )


@attrs.frozen(slots=True)
class RecordedEvent:
    """An event as the run database holds it (SPEC §3), payload upcast to the current version."""

    seq: int
    event_id: str
    run_id: str
    branch: str
    stream: str
    stream_version: int
    type: str
    schema_version: int
    payload: Mapping[str, Any]
    event: Event
    causation_id: str | None
    correlation_id: str | None
    recorded_at: str
    prev_hash: str
    hash: str
