"""Upcasting: old payloads are lifted to the current schema version on read, never rewritten.

An upcaster maps a payload of `(type, version)` to one of `version + 1`; `upcast` chains
them up to the event class's current `VERSION`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from esper_es.core.events import EVENT_TYPES
from esper_es.errors import UnsupportedSchemaVersion

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]

UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(type_name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a function lifting `type_name` payloads from `from_version` to the next."""

    def register(fn: Upcaster) -> Upcaster:
        key = (type_name, from_version)
        if key in UPCASTERS:
            raise ValueError(f"upcaster for {type_name} v{from_version} registered twice")
        UPCASTERS[key] = fn
        return fn

    return register


def current_version(type_name: str) -> int:
    """The schema version the code reads `type_name` at."""
    return EVENT_TYPES[type_name].VERSION


def upcast(type_name: str, version: int, payload: Payload) -> tuple[int, Payload]:
    """Lift `payload` from `version` to the current version; returns (version, payload)."""
    target = current_version(type_name)
    if version > target:
        raise UnsupportedSchemaVersion(type_name, version, target)
    while version < target:
        step = UPCASTERS.get((type_name, version))
        if step is None:
            raise LookupError(f"no upcaster for {type_name} v{version} -> v{version + 1}")
        payload = step(payload)
        version += 1
    return version, payload


@upcaster("SeedGerminated", 1)
def _germinated_v1_to_v2(payload: Payload) -> Payload:
    # v1 recorded no blend target: every seed of that era ramped to full weight.
    return {**payload, "blend_target": 1.0}


@upcaster("SeedGerminated", 2)
def _germinated_v2_to_v3(payload: Payload) -> Payload:
    # v2 recorded no kernel config: every kernel of that era was built with its blueprint's
    # defaults, which `{}` means (the kernel id, a hash of the resolved config, still checks it).
    return {**payload, "config": {}}


@upcaster("RunStarted", 1)
def _run_started_v1_to_v2(payload: Payload) -> Payload:
    # v1 recorded neither how the host was built nor its initial weights: replay rebuilds the
    # built-in host of the config and trusts its initialisation, as it did then.
    return {**payload, "host": None, "initial_weights": None}


@upcaster("RunStarted", 2)
def _run_started_v2_to_v3(payload: Payload) -> Payload:
    # v3 adds the world size and backend of a multi-rank run (SPEC §11); every run before it
    # trained in one process.
    return {**payload, "world_size": 1, "backend": None}


@upcaster("KernelCompiled", 1)
def _kernel_compiled_v1_to_v2(payload: Payload) -> Payload:
    # v1 switched a whole kernel to a dynamic-shape compile of unchecked numerics: no variant.
    return {**payload, "variant": None}


@upcaster("TrainingStopped", 1)
def _training_stopped_v1_to_v2(payload: Payload) -> Payload:
    # v2 only adds the reason `diverged`; every v1 reason means the same in v2.
    return dict(payload)
