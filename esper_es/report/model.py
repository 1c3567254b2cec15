"""The report's data: everything the page shows, extracted from the run database's log.

`extract` reads every event of the file once (`read(branch=None)`) and the branches table,
then derives each branch's view (the events visible from it: its own plus its ancestors'
up to the fork) in memory. Nothing here plots or renders; the numbers are the log's.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from esper_es.core.canonical import canonical_json
from esper_es.core.envelope import RecordedEvent
from esper_es.core.events import TRIGGER_EVENTS
from esper_es.core.lifecycle import TRANSITIONS, Stage
from esper_es.errors import EsperError
from esper_es.report.strategy_outcomes import StrategyOutcomes, strategy_outcomes
from esper_es.store.protocol import RunStore
from esper_es.store.records import Branch

#: Seed event type -> the stage the seed is in after it (blend events keep the stage).
STAGE_AFTER: Mapping[str, str] = {
    TRIGGER_EVENTS[t.trigger].TYPE: str(t.dest) for t in TRANSITIONS if t.dest is not None
}
#: Every lifecycle stage, in the order of SPEC §2 (the legend's order).
STAGES: tuple[str, ...] = tuple(str(s) for s in Stage)
#: Events that change the architecture, drawn as markers on the curves.
ARCHITECTURE_EVENTS: Mapping[str, str] = {
    "SeedGerminated": "germinated",
    "SeedFossilized": "fossilized",
    "SeedCulled": "culled",
    "SeedRolledBack": "seed rolled back",
    "SeedCancelled": "cancelled",
    "AdaptationDecided": "decision",
    "RunRolledBack": "run rollback",
}
_FREES_KERNEL = ("SeedCulled", "SeedRolledBack", "SeedCancelled")


@attrs.frozen
class EpochPoint:
    """One `EpochCompleted`: the metrics at an epoch end."""

    seq: int
    epoch: int
    step: int
    train_loss: float
    val_loss: float
    val_accuracy: float | None


@attrs.frozen
class Marker:
    """An architecture event at a step, for the curves."""

    seq: int
    step: int
    kind: str
    label: str


@attrs.frozen
class StageSpan:
    """A seed in one stage from `start` to `end` (steps; `end` is where the next began)."""

    stage: str
    start: int
    end: int
    blueprint: str | None


@attrs.frozen
class Decision:
    """An `AdaptationDecided`, with what its plan did."""

    seq: int
    branch: str
    step: int
    decision_id: str
    layer: str
    adaptation_type: str
    strategy: str
    source: str
    reason: str
    parameters: Mapping[str, Any]
    seeds: tuple[str, ...]
    commands: tuple[str, ...]
    refused: tuple[str, ...]


@attrs.frozen
class Refusal:
    """A `CommandRefused`: what was asked, of which seed, and why it was not done."""

    seq: int
    branch: str
    step: int
    command: str
    seed: str
    stage: str
    reason: str


@attrs.frozen
class KernelStats:
    """Per blueprint, over every event of the file (each branch's own events counted once)."""

    blueprint: str
    germinated: int = 0
    fossilized: int = 0
    culled: int = 0
    rolled_back: int = 0
    cancelled: int = 0
    contributions: tuple[float, ...] = ()
    parameters: tuple[int, ...] = ()

    @property
    def mean_contribution(self) -> float | None:
        """Mean measured counterfactual contribution, None when never measured."""
        if not self.contributions:
            return None
        return sum(self.contributions) / len(self.contributions)


@attrs.frozen
class BranchView:
    """One line of history as seen from its head: curves, lanes, alphas, final state."""

    name: str
    parent: str | None
    fork_seq: int
    fork_step: int
    head_seq: int
    own_events: int
    last_step: int
    epochs: tuple[EpochPoint, ...]
    markers: tuple[Marker, ...]
    lanes: Mapping[str, tuple[StageSpan, ...]]
    alphas: Mapping[str, tuple[tuple[int, float], ...]]
    step_losses: tuple[tuple[int, float], ...]
    """(step, training loss) from `StepMetricsRecorded` (empty for runs that recorded none)."""
    final_stages: Mapping[str, str]
    fingerprint: str | None
    stopped: str | None

    @property
    def accuracy_start(self) -> float | None:
        """Validation accuracy at the first epoch point (before training: the untrained host)."""
        return self.epochs[0].val_accuracy if self.epochs else None

    @property
    def accuracy_end(self) -> float | None:
        """Validation accuracy at the last epoch point."""
        return self.epochs[-1].val_accuracy if self.epochs else None


@attrs.frozen
class LayerInfo:
    """A registered seed layer."""

    name: str
    shape_kind: str
    channels: int
    num_seeds: int


@attrs.frozen
class RunReport:
    """Everything the report shows."""

    run_id: str
    task: str | None
    configured_epochs: int | None
    master_seed: int | None
    head_seq: int
    head_hash: str
    layers: tuple[LayerInfo, ...]
    seeds: tuple[str, ...]
    branches: tuple[BranchView, ...]
    decisions: tuple[Decision, ...]
    refusals: tuple[Refusal, ...]
    kernels: tuple[KernelStats, ...]
    event_counts: Mapping[str, int]
    strategies: tuple[StrategyOutcomes, ...] = ()

    def branch(self, name: str) -> BranchView:
        """The view of branch `name`."""
        for b in self.branches:
            if b.name == name:
                return b
        raise KeyError(f"no branch {name!r}")

    @property
    def newest(self) -> BranchView:
        """The most recently opened branch (the one `resume` continues by default)."""
        return self.branches[-1]


def extract(db: RunStore, *, parameters: bool = True) -> RunReport:
    """Build the report model from every event of `db` and its branches table."""
    events = list(db.read(branch=None))
    branches = db.branches()
    run = next((e for e in events if e.type == "RunStarted"), None)
    config: Mapping[str, Any] = run.payload["config"] if run is not None else {}
    layers = tuple(
        LayerInfo(
            e.payload["layer"],
            e.payload["shape_kind"],
            e.payload["channels"],
            e.payload["num_seeds"],
        )
        for e in events
        if e.type == "SeedLayerRegistered"
    )
    seeds = tuple(f"{la.name}/{i}" for la in layers for i in range(la.num_seeds))
    head_seq, head_hash = db.head()
    return RunReport(
        run_id=db.run_id,
        task=config.get("host", {}).get("task"),
        configured_epochs=config.get("train", {}).get("epochs"),
        master_seed=run.payload["master_seed"] if run is not None else None,
        head_seq=head_seq,
        head_hash=head_hash,
        layers=layers,
        seeds=seeds,
        branches=tuple(_branch_view(db, b, events, seeds) for b in branches),
        decisions=_decisions(events),
        refusals=tuple(
            Refusal(
                e.seq,
                e.branch,
                e.payload["step"],
                e.payload["command"],
                e.payload["seed"],
                e.payload["stage"],
                e.payload["reason"],
            )
            for e in events
            if e.type == "CommandRefused"
        ),
        kernels=_kernel_stats(events, layers, parameters=parameters),
        event_counts=dict(sorted(Counter(e.type for e in events).items())),
        strategies=strategy_outcomes(events),
    )


def visible(db: RunStore, branch: str, events: Sequence[RecordedEvent]) -> list[RecordedEvent]:
    """The events `branch` sees: its own, and each ancestor's up to where it forked."""
    bounds = dict(db.lineage(branch))
    out = []
    for e in events:
        if e.branch in bounds:
            bound = bounds[e.branch]
            if bound is None or e.seq <= bound:
                out.append(e)
    return out


def _step(e: RecordedEvent) -> int:
    step = e.payload.get("step")
    return int(step) if isinstance(step, int) else 0


def _branch_view(
    db: RunStore, branch: Branch, events: Sequence[RecordedEvent], seeds: Sequence[str]
) -> BranchView:
    seen = visible(db, branch.name, events)
    last_step = max((_step(e) for e in seen), default=0)
    fork_step = max((_step(e) for e in seen if e.seq <= branch.fork_seq), default=0)
    epochs = tuple(
        EpochPoint(
            e.seq,
            e.payload["epoch"],
            e.payload["step"],
            e.payload["train_loss"],
            e.payload["val_loss"],
            e.payload["val_accuracy"],
        )
        for e in seen
        if e.type == "EpochCompleted"
    )
    markers = tuple(
        Marker(e.seq, _step(e), ARCHITECTURE_EVENTS[e.type], _marker_label(e))
        for e in seen
        if e.type in ARCHITECTURE_EVENTS
    )
    stage: dict[str, str] = {s: "DORMANT" for s in seeds}
    since: dict[str, int] = {s: 0 for s in seeds}
    blueprint: dict[str, str | None] = {s: None for s in seeds}
    lanes: dict[str, list[StageSpan]] = defaultdict(list)
    alphas: dict[str, list[tuple[int, float]]] = defaultdict(list)
    alpha: dict[str, float] = {s: 0.0 for s in seeds}
    for e in seen:
        seed = e.payload.get("seed") if e.stream.startswith("seed:") else None
        if not isinstance(seed, str):
            continue
        step = _step(e)
        stage.setdefault(seed, "DORMANT")
        since.setdefault(seed, 0)
        new = STAGE_AFTER.get(e.type)
        if new is not None:
            lanes[seed].append(StageSpan(stage[seed], since[seed], step, blueprint.get(seed)))
            stage[seed], since[seed] = new, step
            if e.type == "SeedGerminated":
                blueprint[seed] = e.payload["blueprint"]
            elif new == "DORMANT":
                blueprint[seed] = None
        if e.type in ("BlendAdjusted", "SeedStabilized"):
            alpha[seed] = float(e.payload["alpha"])
            alphas[seed].append((step, alpha[seed]))
        elif e.type == "SeedGraftingStarted":
            alpha[seed] = 0.0
            alphas[seed].append((step, 0.0))
        elif e.type in _FREES_KERNEL and alpha.get(seed, 0.0) > 0.0:
            alphas[seed].append((step, alpha[seed]))
            alpha[seed] = 0.0
            alphas[seed].append((step, 0.0))
    for seed in stage:
        lanes[seed].append(StageSpan(stage[seed], since[seed], last_step, blueprint.get(seed)))
        if alphas.get(seed):
            alphas[seed].append((last_step, alpha[seed]))
    step_losses = tuple(
        (int(at), float(loss))
        for e in seen
        if e.type == "StepMetricsRecorded"
        for at, loss in zip(e.payload["steps"], e.payload["train_loss"], strict=True)
        if loss is not None
    )
    checkpoints = [e for e in seen if e.type == "Checkpointed"]
    stops = [e for e in seen if e.type == "TrainingStopped"]
    return BranchView(
        name=branch.name,
        parent=branch.parent,
        fork_seq=branch.fork_seq,
        fork_step=fork_step if branch.parent is not None else 0,
        head_seq=max((e.seq for e in seen), default=0),
        own_events=sum(1 for e in seen if e.branch == branch.name),
        last_step=last_step,
        epochs=epochs,
        markers=markers,
        lanes={s: tuple(v) for s, v in lanes.items()},
        alphas={s: tuple(v) for s, v in alphas.items()},
        step_losses=step_losses,
        final_stages=dict(stage),
        fingerprint=checkpoints[-1].payload["fingerprint"] if checkpoints else None,
        stopped=stops[-1].payload["reason"] if stops and stops[-1].seq > branch.fork_seq else None,
    )


def _marker_label(e: RecordedEvent) -> str:
    p = e.payload
    if e.type == "SeedGerminated":
        return f"{p['seed']} {p['blueprint']}"
    if e.type == "AdaptationDecided":
        return f"{p['adaptation_type']} {p['layer']}"
    if e.type == "RunRolledBack":
        return f"rollback to seq {p['to_seq']} -> {p['branch']}"
    return str(p.get("seed", ""))


def _decisions(events: Sequence[RecordedEvent]) -> tuple[Decision, ...]:
    touched: dict[str, list[str]] = defaultdict(list)
    refused: dict[str, list[str]] = defaultdict(list)
    commands: dict[str, tuple[str, ...]] = {}
    for e in events:
        corr = e.correlation_id
        if corr is None:
            continue
        if e.type == "AdaptationPlanned":
            commands[corr] = tuple(
                f"{c.get('type', '?')} {c.get('seed', '')}".strip() for c in e.payload["commands"]
            )
        elif e.type == "CommandRefused":
            refused[corr].append(
                f"{e.payload['command']} {e.payload['seed']} ({e.payload['stage']}): "
                f"{e.payload['reason']}"
            )
        elif e.stream.startswith("seed:") and e.type in STAGE_AFTER:
            seed = str(e.payload["seed"])
            if seed not in touched[corr]:
                touched[corr].append(seed)
    out = []
    for e in events:
        if e.type != "AdaptationDecided":
            continue
        p = e.payload
        did = p["decision_id"]
        out.append(
            Decision(
                seq=e.seq,
                branch=e.branch,
                step=p["step"],
                decision_id=did,
                layer=p["layer"],
                adaptation_type=p["adaptation_type"],
                strategy=p["strategy"],
                source=p["source"],
                reason=p["reason"],
                parameters=dict(p["parameters"]),
                seeds=tuple(touched.get(did, ())),
                commands=commands.get(did, ()),
                refused=tuple(refused.get(did, ())),
            )
        )
    return tuple(out)


def _kernel_stats(
    events: Sequence[RecordedEvent], layers: Sequence[LayerInfo], *, parameters: bool
) -> tuple[KernelStats, ...]:
    shape = {la.name: (la.shape_kind, la.channels) for la in layers}
    # A kernel is one `SeedGerminated`; an outcome on several branches (a seed germinated
    # before a fork and fossilized on both) counts once, and so does each measurement.
    germinated: dict[str, list[int]] = defaultdict(list)
    outcomes: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    measured: dict[tuple[int, str], tuple[str, float]] = {}
    params: dict[str, list[int]] = defaultdict(list)
    holder: dict[tuple[str, str], tuple[str, int]] = {}
    latest: dict[str, tuple[str, int]] = {}
    for e in events:
        if not e.stream.startswith("seed:"):
            continue
        p = e.payload
        seed = str(p["seed"])
        if e.type == "SeedGerminated":
            bp = str(p["blueprint"])
            holder[(e.branch, seed)] = latest[seed] = (bp, e.seq)
            germinated[bp].append(e.seq)
            if parameters:
                n = _parameter_count(bp, *shape.get(str(p["layer"]), ("", 0)), p["config"])
                if n is not None:
                    params[bp].append(n)
            continue
        # A branch's first events on a seed germinated before its fork find it on the parent.
        held = holder.get((e.branch, seed)) or latest.get(seed)
        if held is None:
            continue
        bp, kernel = held
        outcome = _OUTCOMES.get(e.type)
        if outcome is not None:
            outcomes[bp][outcome].add(kernel)
        if e.type in ("SeedFineTuningStarted", "SeedFossilized"):
            measured.setdefault((kernel, e.type), (bp, float(p["contribution"])))
    contributions: dict[str, list[float]] = defaultdict(list)
    for bp, value in measured.values():
        contributions[bp].append(value)
    return tuple(
        KernelStats(
            blueprint=bp,
            germinated=len(seqs),
            fossilized=len(outcomes[bp]["fossilized"]),
            culled=len(outcomes[bp]["culled"]),
            rolled_back=len(outcomes[bp]["rolled_back"]),
            cancelled=len(outcomes[bp]["cancelled"]),
            contributions=tuple(contributions[bp]),
            parameters=tuple(sorted(set(params[bp]))),
        )
        for bp, seqs in sorted(germinated.items())
    )


_OUTCOMES: Mapping[str, str] = {
    "SeedFossilized": "fossilized",
    "SeedCulled": "culled",
    "SeedRolledBack": "rolled_back",
    "SeedCancelled": "cancelled",
}


def _parameter_count(
    blueprint: str, shape_kind: str, channels: int, config: Mapping[str, Any]
) -> int | None:
    """Trainable parameters of a kernel of `blueprint` on this layer, None if not buildable."""
    try:
        from esper_es.nn.kernels import build_kernel
    except ImportError:  # the report works without torch; the count is then omitted
        return None
    key = (blueprint, shape_kind, channels, canonical_json(dict(config)))
    if key not in _PARAMS:
        try:
            kernel = build_kernel(blueprint, shape_kind, channels, 0, config)
        except (EsperError, KeyError, ValueError, TypeError):
            _PARAMS[key] = None
        else:
            _PARAMS[key] = sum(int(t.numel()) for t in kernel.parameters())
    return _PARAMS[key]


_PARAMS: dict[tuple[str, str, int, str], int | None] = {}
