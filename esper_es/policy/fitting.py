"""Fitting the learned controller's posterior from the library, once, at the run's start.

Training rows: every other run's kernel outcome (`kernel_outcomes`, of this run's shape kinds,
`fossilized` or `culled`: a rollback or a cancelled germination says nothing about the kernel)
that has a germination context (`esper_es.policy.contexts`). A row's features are the action
features of `(its strategy, its layer, its blueprint)` in its context; its outcome is the
kernel's last measured contribution (0 if never measured) plus `fossil_bonus` if it
fossilized. Rows are taken in the tables' stable order.

The posterior is recorded as `PolicyFitted` in the run's first transaction, right after
`LibraryConsulted`. Everything after reads the recorded event (`recorded_fit`), never the
library, as the ranking does with `LibraryConsulted`: a replay, resume, rollback or
`replay --recompute-decisions` decides from the posterior the run started with, with or
without the library file present.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from esper_es.core import events as ev
from esper_es.core.bandit import Posterior, fit
from esper_es.core.canonical import canonical_json
from esper_es.library.database import LibraryDatabase, OutcomeRow
from esper_es.policy.contexts import ContextRow, contexts
from esper_es.policy.features import action_features, feature_names
from esper_es.policy.settings import LearnedConfig
from esper_es.store.protocol import RunStore

Row = tuple[dict[str, float], float]

_LEARNED_FROM = frozenset({"fossilized", "culled"})


def training_rows(
    outcomes: Iterable[OutcomeRow],
    rows: Iterable[ContextRow],
    *,
    run_id: str,
    shape_kinds: Iterable[str],
    fossil_bonus: float,
) -> list[Row]:
    """`(features, outcome)` of other runs' kernels of `shape_kinds` (module docstring)."""
    kinds = set(shape_kinds)
    where = {(c.run_id, c.branch, c.seed, c.kernel_id): c for c in rows}
    out: list[Row] = []
    for o in outcomes:
        if o.run_id == run_id or o.shape_kind not in kinds or o.outcome not in _LEARNED_FROM:
            continue
        c = where.get((o.run_id, o.branch, o.seed, o.kernel_id))
        if c is None:
            continue
        y = (o.contribution or 0.0) + (fossil_bonus if o.outcome == "fossilized" else 0.0)
        out.append((action_features(c.values(), c.strategy, c.layer, o.blueprint), y))
    return out


def rows_digest(rows: Sequence[Row]) -> str:
    """`sha256:` of the rows' canonical JSON."""
    data = canonical_json([[features, y] for features, y in rows])
    return "sha256:" + hashlib.sha256(data.encode()).hexdigest()


def policy_fit(
    library: LibraryDatabase | None,
    *,
    run_id: str,
    layers: Sequence[tuple[str, Sequence[str]]],
    shape_kinds: Iterable[str],
    settings: LearnedConfig,
) -> ev.PolicyFitted:
    """The posterior for a run with `layers` (name, fitting blueprints), from `library`."""
    rows: list[Row] = []
    if library is not None:
        rows = training_rows(
            library.outcomes(),
            contexts(library),
            run_id=run_id,
            shape_kinds=shape_kinds,
            fossil_bonus=settings.fossil_bonus,
        )
    posterior = fit(
        feature_names(layers), rows, prior_scale=settings.prior_scale, noise=settings.noise
    )
    return ev.PolicyFitted(
        library=None if library is None else str(library.path),
        posterior=posterior.to_dict(),
        prior_scale=settings.prior_scale,
        noise=settings.noise,
        fossil_bonus=settings.fossil_bonus,
        rows_digest=rows_digest(rows),
    )


def recorded_fit(db: RunStore | None) -> ev.PolicyFitted | None:
    """The run's `PolicyFitted`, if its log has one."""
    if db is None:
        return None
    found = list(db.read(types=["PolicyFitted"], branch=None))
    event = found[0].event if found else None
    assert event is None or isinstance(event, ev.PolicyFitted)
    return event


def posterior_digest(posterior: Posterior) -> str:
    """`sha256:` of the posterior's canonical JSON (how `PolicySampled` names it)."""
    return "sha256:" + hashlib.sha256(canonical_json(posterior.to_dict()).encode()).hexdigest()


def start_fact(trainer: Any) -> ev.PolicyFitted | None:
    """The run-start `PolicyFitted` of a trainer whose controller learns (else None).

    The one its log holds (a re-executed start), else fitted now from the library it writes to.
    """
    from esper_es.policy.learned import LearnedController

    controller = trainer.controller
    if not isinstance(controller, LearnedController):
        return None
    recorded = recorded_fit(trainer.db)
    if recorded is not None:
        return recorded
    layers = [(name, tuple(layer.blueprints)) for name, layer in trainer.layers.items()]
    kinds = sorted({layer.shape_kind for layer in trainer.layers.values()})
    return policy_fit(
        trainer.recorder.library,
        run_id=trainer.run_id,
        layers=layers,
        shape_kinds=kinds,
        settings=controller.config.learned,
    )


def bind(trainer: Any) -> None:
    """Point a learned controller at its trainer's log (where its `PolicyFitted` is)."""
    from esper_es.policy.learned import LearnedController

    controller = trainer.controller
    if isinstance(controller, LearnedController):
        controller.source = lambda: recorded_fit(trainer.db)
        controller.forget()
