"""The trainer's side of the library: artifacts at germination, outcomes when a kernel leaves.

`KernelRecorder.before(event)` is called by the trainer before the projector applies an event
and returns a callback to run right after it (or None): after a `SeedGerminated` the freshly
built kernel (still at its initial weights: nothing trains between a commit and its
projection) is turned into an artifact, checked byte for byte against the artifact the run
database already holds for that kernel id (replay, resume, a branch re-germinating it), and
stored; after `SeedFossilized`, `SeedCulled`, `SeedRolledBack` or `SeedCancelled` the outcome is
recorded, with the kernel's last measured contribution.

The file work of both (the check, the rows and blobs in the run database and the library)
may wait for `KernelRecorder.flush`: the live trainer defers it to its next boundary's commit
(`esper_es.trainer.boundary.commit`), because the run database is then still committing the
boundary that projected the event in the background (`esper_es.store.commit_writer`) and any
statement on it would wait for that commit; at the next boundary the append waits for it
anyway, after a training step it overlapped. What the ranking reads (`seen`) is updated at
once. A crash before the flush loses those rows with the boundary in flight: a resume
re-executes the boundaries after its snapshot, and each commit flushes what came before.

Ranking reads the library only through the log: at the run's start the trainer records what
the library held for its shape kinds (`consultation`, a `LibraryConsulted` fact), and ranking
reads that event plus the run's own outcomes, never the library's current content, so a
resume, a rollback or a recomputing replay ranks exactly as the run did.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from esper_es.core import events as ev
from esper_es.core.canonical import canonical_json
from esper_es.core.decider import layer_of
from esper_es.core.state import LayerState, SeedState
from esper_es.library.artifacts import artifact_bytes, check_artifact_bytes
from esper_es.library.database import ArtifactRow, KernelTables, LibraryDatabase, OutcomeRow
from esper_es.library.statistics import (
    Arm,
    ArmTotals,
    RankingPrior,
    arm_totals,
    library_ranking,
    totals_from_payload,
    totals_to_payload,
)
from esper_es.nn.kernels import Kernel
from esper_es.nn.projector import Projector
from esper_es.policy.contexts import ContextRecorder
from esper_es.store.protocol import RunStore

OUTCOMES: dict[type[ev.Event], str] = {
    ev.SeedFossilized: "fossilized",
    ev.SeedCulled: "culled",
    ev.SeedRolledBack: "rolled_back",
    ev.SeedCancelled: "cancelled",
}


@attrs.define
class _Alive:
    germinated_step: int
    started: float


class KernelRecorder:
    """Records artifacts and outcomes of one run in its run database and an optional library."""

    def __init__(
        self,
        db: RunStore,
        projector: Projector,
        *,
        run_id: str,
        branch: Callable[[], str],
        contribution: Callable[[str], float | None],
        library: LibraryDatabase | None = None,
        prior: RankingPrior | None = None,
        kernel_config: Mapping[str, Mapping[str, Any]] | None = None,
        step: Callable[[], int] = lambda: 2**62,
    ) -> None:
        self.db = db
        self.tables = KernelTables(db.sql, writable=not db.readonly)
        self.projector = projector
        self.run_id = run_id
        self.branch = branch
        self.contribution = contribution
        self.library = library
        #: Germination contexts for the learned controller (esper_es.policy.contexts).
        self.contexts = ContextRecorder(library, run_id, branch) if library is not None else None
        self.prior = prior or RankingPrior()
        self.kernel_config = {k: dict(v) for k, v in (kernel_config or {}).items()}
        self.alive: dict[str, _Alive] = {}
        self.step = step
        #: This run's outcomes in the order its events were projected: the ranking reads these
        #: (not the tables, which may already hold a finished run's later outcomes), so a
        #: recomputing replay ranks exactly as the original run did at the same seq.
        self.seen: list[OutcomeRow] = []
        self.checked = 0
        self._consulted: dict[Arm, ArmTotals] | None = None
        #: Branch -> {ancestor: the last step of it that the branch sees} (see `_ancestors`).
        self._lineage: dict[str, dict[str, int]] = {}
        #: File work deferred to `flush`, in projection order.
        self._pending: list[Callable[[], None]] = []
        #: The artifact rows of kernels germinated while deferring, by kernel id: an outcome
        #: reads its kernel's row from here rather than from a table still waiting for `flush`
        #: (the same fields: the kernel id hashes the config and the shape, which fix the rest).
        self._artifacts: dict[str, ArtifactRow] = {}

    def close(self) -> None:
        """Close the shared library (its WAL checkpointed now, not whenever it is collected)."""
        if self.library is not None:
            self.library.close()
            self.library = None
            self.contexts = None

    def recorded_consultation(self) -> ev.LibraryConsulted | None:
        """The run's `LibraryConsulted`, if its log has one (a replay, resume or rollback)."""
        found = list(self.db.read(types=["LibraryConsulted"], branch=None))
        event = found[0].event if found else None
        assert event is None or isinstance(event, ev.LibraryConsulted)
        return event

    def consultation(self, shape_kinds: Iterable[str]) -> ev.LibraryConsulted | None:
        """The run-start fact: the one the log holds, else what the library holds now (if any).

        Only other runs' outcomes of `shape_kinds` are summed; None without a library.
        """
        recorded = self.recorded_consultation()
        if recorded is not None or self.library is None:
            return recorded
        kinds = set(shape_kinds)
        rows = [
            r for r in self.library.outcomes() if r.run_id != self.run_id and r.shape_kind in kinds
        ]
        return ev.LibraryConsulted(
            library=str(self.library.path), arms=totals_to_payload(arm_totals(rows)), step=0
        )

    def consulted(self) -> dict[Arm, ArmTotals]:
        """The per-arm totals the run's `LibraryConsulted` recorded (none: empty)."""
        if self._consulted is None:
            event = self.recorded_consultation()
            if event is None and self.db.head()[0] == 0:
                # The start boundary (which records it) has not committed yet: do not cache.
                return {}
            self._consulted = totals_from_payload(event.arms if event is not None else [])
        return self._consulted

    def before(self, event: ev.Event, *, defer: bool = False) -> Callable[[], None] | None:
        """The callback to run once `event` is projected, if it concerns the library.

        With `defer` (a writable run database only), the callback's file work waits for
        `flush`.
        """
        if self.contexts is not None:
            self.contexts.seen(event)
        defer = defer and not self.db.readonly
        if isinstance(event, ev.SeedGerminated):
            return lambda: self._germinated(event, defer)
        outcome = OUTCOMES.get(type(event))
        if outcome is not None and isinstance(event, ev.SeedEvent):
            state = self.projector.seed_state(event.seed)
            return lambda: self._ended(event, state, outcome, defer)
        return None

    def flush(self) -> None:
        """Do the file work deferred so far, in the order its events were projected."""
        pending, self._pending = self._pending, []
        for work in pending:
            work()

    def _file_work(self, work: Callable[[], None], defer: bool) -> None:
        if defer:
            self._pending.append(work)
        else:
            work()

    def _germinated(self, event: ev.SeedGerminated, defer: bool) -> None:
        layer = self.projector.layers[layer_of(event.seed)]
        kernel = layer.kernel(layer.index_of(event.seed))
        assert isinstance(kernel, Kernel)
        # Taken now, at the initial weights, whenever the check and the writes happen.
        data = artifact_bytes(kernel)
        row = ArtifactRow(
            kernel_id=kernel.kernel_id,
            blob_key="",
            blueprint=kernel.spec.blueprint,
            version=kernel.spec.version,
            config=canonical_json(dict(kernel.spec.config)),
            shape_kind=kernel.spec.shape_kind,
            channels=kernel.spec.channels,
            init_seed=kernel.spec.init_seed,
            params=sum(p.numel() for p in kernel.parameters()),
        )
        if defer:
            self._artifacts[row.kernel_id] = row
        self._file_work(lambda: self._store_artifact(data, row), defer)
        self.alive[event.seed] = _Alive(event.step, time.perf_counter())

    def _store_artifact(self, data: bytes, row: ArtifactRow) -> None:
        known = self.tables.artifact(row.kernel_id)
        if known is not None and self.db.has_blob(known.blob_key):
            check_artifact_bytes(row.kernel_id, data, self.db.get_blob(known.blob_key))
            self.checked += 1
        if not self.db.readonly:
            self.tables.index_artifact(attrs.evolve(row, blob_key=self.db.put_blob(data)))
        if self.library is not None:
            self.library.index_artifact(attrs.evolve(row, blob_key=self.library.put_blob(data)))

    def _ended(self, event: ev.SeedEvent, before: SeedState, outcome: str, defer: bool) -> None:
        if before.kernel_id is None:
            return
        art = self._artifacts.get(before.kernel_id) if defer else None
        if art is None:
            self.flush()  # the table read below sees every row projected before
            art = self.tables.artifact(before.kernel_id)
        if art is None and self.library is not None:
            art = self.library.artifact(before.kernel_id)
        alive = self.alive.pop(event.seed, None)
        contribution = getattr(event, "contribution", None)
        if contribution is None:
            contribution = self.contribution(event.seed)
        row = OutcomeRow(
            run_id=self.run_id,
            branch=self.branch(),
            seed=event.seed,
            kernel_id=before.kernel_id,
            blueprint=before.blueprint or "",
            config=art.config if art is not None else "{}",
            shape_kind=art.shape_kind if art is not None else "",
            outcome=outcome,
            contribution=None if contribution is None else float(contribution),
            params=art.params if art is not None else 0,
            germinated_step=alive.germinated_step if alive is not None else -1,
            ended_step=int(getattr(event, "step", -1)),
            seconds=time.perf_counter() - alive.started if alive is not None else 0.0,
        )
        self.seen.append(row)
        self._file_work(lambda: self._store_outcome(row), defer)

    def _store_outcome(self, row: OutcomeRow) -> None:
        if not self.db.readonly:
            self.tables.record_outcome(row)
        if self.library is not None:
            self.library.record_outcome(row)

    def outcomes(self, shape_kind: str) -> list[OutcomeRow]:
        """This run's own outcomes so far (ranking adds the recorded library totals)."""
        # A resumed run has not projected the outcomes before its snapshot: its own table has
        # them (ended before the current boundary's step, on this branch, or on an ancestor
        # branch up to the fork: a branch has its whole past, SPEC §6).
        mine = {(r.seed, r.kernel_id): r for r in self.seen if r.shape_kind == shape_kind}
        branch, step = self.branch(), self.step()
        ancestors = self._ancestors(branch)
        self.flush()
        for r in self.tables.outcomes(shape_kind):
            if r.run_id != self.run_id or r.ended_step >= step:
                continue
            if r.branch == branch or r.ended_step <= ancestors.get(r.branch, -1):
                mine.setdefault((r.seed, r.kernel_id), r)
        return sorted(mine.values(), key=lambda r: (r.ended_step, r.seed, r.kernel_id))

    def _ancestors(self, branch: str) -> dict[str, int]:
        """Each ancestor of `branch` and the step of the last of its events `branch` sees.

        A fork is at the end of a step boundary, so an ancestor's outcomes up to and including
        that step are in the branch's past, and none of its later ones.
        """
        found = self._lineage.get(branch)
        if found is None:
            found = {}
            for name, bound in self.db.lineage(branch):
                if bound is None:
                    continue
                row = self.db.event_at(bound)
                step = json.loads(row[8]).get("step", 0) if row is not None else 0
                found[name] = int(step) if isinstance(step, int) else 0
            self._lineage[branch] = found
        return found

    def ranking(self) -> Callable[[LayerState], Sequence[str]]:
        """The orchestrator's `ranking`, from `outcomes` (see `esper_es.library.statistics`)."""
        from esper_es.nn.blueprints import get_blueprint

        def config(layer: LayerState, name: str) -> dict[str, Any]:
            return get_blueprint(name).resolve_config(self.kernel_config.get(name))

        return library_ranking(self.outcomes, self.prior, config, self.consulted)


def recorder_for(trainer: Any) -> KernelRecorder:
    """The recorder of a trainer wired to its database (the library only when writing)."""
    cfg = trainer.config.library
    db: RunStore = trainer.db
    library = None
    path = getattr(trainer, "library_path", cfg.path)
    if path is not None and not db.readonly:
        library = LibraryDatabase(path)
    return KernelRecorder(
        db,
        trainer.projector,
        run_id=trainer.run_id,
        branch=lambda: trainer.bus.branch,
        contribution=lambda seed: trainer.driver.contributions.get(seed),
        library=library,
        prior=RankingPrior(
            prior_mean=cfg.prior_mean,
            prior_strength=cfg.prior_strength,
            exploration=cfg.exploration,
            fossil_bonus=cfg.fossil_bonus,
        ),
        kernel_config=trainer.config.seeds.kernel_config,
        step=lambda: int(trainer.step),
    )
