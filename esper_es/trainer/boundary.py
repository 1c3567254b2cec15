"""The boundary protocol (SPEC §5): what happens between two optimizer steps, in one place.

At each boundary the trainer gathers commands, in this order: facts due (`EpochCompleted`,
`Checkpointed`, `TrainingStopped`), the lifecycle driver's commands, then the orchestrator's
(queued decisions from the controller or from users, planned against the live state); it
commits them all with one `CommandBus.execute_all` (one transaction), settles the
orchestrator's tickets, and projects the newly written events, in seq order, into the model
and the optimizer. Nothing else changes the architecture. Every command carries `step` = the
number of optimizer steps done so far.

`Checkpointed` at a boundary is recorded first in its transaction: its fingerprints describe
the model and optimizer after the step's update and before that boundary's lifecycle changes,
i.e. exactly the state at its own seq. A snapshot, when due, is taken at the same moment.

Each function returns, where it ends a boundary, one of `continue`, `ended`, `interrupted`,
`diverged` or `done` (a replay reached its target).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from esper_es.command_bus import Outcome
from esper_es.core import commands as c
from esper_es.core import events as ev
from esper_es.core.lr_schedule import lr_factor
from esper_es.policy import fitting as policy
from esper_es.runtime.environment import capture_environment
from esper_es.store.backends import create_store
from esper_es.store.protocol import RunStore
from esper_es.trainer.checkpoints import checkpoint_event
from esper_es.trainer.initial_weights import record_initial_weights
from esper_es.trainer.telemetry import LiveProbe

if TYPE_CHECKING:
    from esper_es.trainer.loop import Trainer


def open_store(t: Trainer) -> RunStore:
    """Create the run's store, committing in the background where the backend can (SQLite).

    Each boundary's commit then overlaps the steps after it (B2): the rows are planned
    (seqs, hashes) before the hand-off, the boundary projects its events from them, and the
    next use of the store (the next boundary's checkpoint, `close`) waits for the commit and
    raises its error. A crash in between loses that boundary only, which `resume` re-executes
    deterministically (why this is safe: `esper_es.store.commit_writer`).
    """
    db = create_store(t.db_path, t.run_id)
    db.commit_in_background()
    return db


def start_boundary(t: Trainer) -> None:
    """Boundary 0: the run, its seed layers, the host's starting quality, a checkpoint."""
    assert t.db is not None
    if t.replay_source is None:
        t.initial_weights = record_initial_weights(t.db, t.model)
    val_loss0, acc0 = t.evaluate()
    t.val_loss_history.append(val_loss0)
    if acc0 is not None:
        t.val_accuracy_history.append(acc0)
    start_cmds: list[c.Command] = [
        c.StartRun(
            command_id=t._new_id(),
            run_id=t.run_id,
            master_seed=t.master_seed,
            config=t.config.to_dict(),
            dataset_fingerprint=t.dataset_fingerprint,
            environment=capture_environment(t.device),
            host=t.host_source,
            initial_weights=t.initial_weights,
            world_size=1 if t.ranks is None else t.ranks.world_size,
            backend=None if t.ranks is None else t.ranks.backend,
        )
    ]
    consulted = t.recorder.consultation(layer.shape_kind for layer in t.layers.values())
    if consulted is not None:
        start_cmds.append(fact(t, consulted))
    fitted = policy.start_fact(t)
    if fitted is not None:
        start_cmds.append(fact(t, fitted))
    start_cmds += [layer.register_command(t._new_id()) for layer in t.layers.values()]
    start_cmds.append(fact(t, ev.EpochCompleted(
        epoch=0, step=0, train_loss=val_loss0, val_loss=val_loss0, val_accuracy=acc0,
        metrics={"initial": True},
    )))  # fmt: skip
    start_cmds.append(checkpoint(t, 0, snapshot=False))
    commit(t, start_cmds)


def after_step(
    t: Trainer, epoch: int, losses: list[float], last_in_epoch: bool, final: bool
) -> str:
    """The boundary after a step."""
    if not last_in_epoch and _quiet(t):
        return "continue"
    source = t.replay_source
    if source is not None:
        if source.recorded:
            return "done" if source.apply_boundary(t) else "continue"
        source.before_boundary(t)
    if t.divergence is not None:
        return diverged_stop(t)
    facts: list[c.Command] = []
    if last_in_epoch:
        train_loss = sum(losses) / len(losses)
        val_loss, acc = t.evaluate()
        if not math.isfinite(val_loss):
            t.divergence = f"validation loss {val_loss} at step {t.step}"
            return diverged_stop(t)
        t.train_loss_history.append(train_loss)
        t.val_loss_history.append(val_loss)
        if acc is not None:
            t.val_accuracy_history.append(acc)
        facts.append(fact(t, ev.EpochCompleted(
            epoch=epoch, step=t.step, train_loss=train_loss,
            val_loss=val_loss, val_accuracy=acc, metrics={"steps": len(losses)},
        )))  # fmt: skip
        every = t.config.train.metrics_every_steps
        if every > 0:
            facts.append(fact(t, step_metrics(t, epoch, losses, every)))
    if final:
        facts.append(checkpoint(t, epoch, snapshot=True))
        facts.append(stopped(t, "completed"))
    elif last_in_epoch:
        every = t.config.train.snapshot_every_epochs
        snap = every > 0 and epoch % every == 0
        facts.append(checkpoint(t, epoch, snapshot=snap))
    elif _checkpoint_due(t):
        facts.append(checkpoint(t, epoch, snapshot=False))
    return rest(t, facts, last_in_epoch=last_in_epoch, final=final)


def _quiet(t: Trainer) -> bool:
    """Whether the boundary after a step within an epoch has nothing to record or decide.

    Most boundaries of a run: they would find it out one call at a time (`rest`, `boundary`,
    the outcomes, `_nothing_due`); answering it here first saves ~4 µs between two steps (B2).
    """
    return (
        t.replay_source is None
        and t.divergence is None
        and t.on_step is None
        and not t._stop
        and not _checkpoint_due(t)
        and not t.outcomes.any_due
        and _nothing_due(t, controller=False)
    )


def step_metrics(t: Trainer, epoch: int, losses: list[float], every: int) -> ev.StepMetricsRecorded:
    """The epoch's per-step training loss and host learning rate, every `every`-th step."""
    cfg = t.config.train
    first = t.step - len(losses) + 1
    steps = [s for s in range(first, t.step + 1) if s % every == 0]
    horizon = cfg.epochs * t.steps_per_epoch()

    def lr(step: int) -> float:
        # The rate the optimizer step that made `step` ran with (trainer.step sets it from
        # the steps done before it): a function of the step and the config alone.
        if cfg.lr_schedule == "constant":
            return cfg.lr
        factor = lr_factor(
            cfg.lr_schedule, step - 1, horizon, cfg.lr_warmup_steps, cfg.lr_min_factor
        )
        return cfg.lr * factor

    return ev.StepMetricsRecorded(
        epoch=epoch,
        step=t.step,
        steps=steps,
        train_loss=[_finite(losses[s - first]) for s in steps],
        lr=[lr(s) for s in steps],
    )


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def diverged_stop(t: Trainer) -> str:
    """Record a diverged run's end: its fingerprint, then `TrainingStopped(diverged)`.

    No snapshot (the trainer's histories hold the non-finite loss) and no lifecycle or
    controller work (their telemetry would too); the log stays verifiable, and a rollback
    to an earlier seq continues from before the divergence.
    """
    boundary(
        t,
        [checkpoint(t, t.epoch, snapshot=False), stopped(t, "diverged")],
        t._probe,
        lifecycle=False,
    )
    t.recorder.flush()  # the run's last boundary: nothing after it would
    return "diverged"


def rest(t: Trainer, facts: list[c.Command], *, last_in_epoch: bool, final: bool) -> str:
    """The boundary once its facts are built: lifecycle, commit, hooks and Ctrl-C."""
    boundary(t, facts, t._probe, lifecycle=not final, controller=last_in_epoch)
    if final:
        t.recorder.flush()  # the run's last boundary: nothing after it would
        return "ended"
    source = t.replay_source
    if source is not None and source.finished():
        return "done"
    if t.on_step is not None:
        try:
            t.on_step(t, t.step)
        except KeyboardInterrupt:
            t._stop = True
    if t._stop:
        # The boundary above ran in full, so the stop's snapshot is the state after it.
        commit(t, [checkpoint(t, t.epoch, snapshot=True, phase="after"),
                   stopped(t, "interrupted")])  # fmt: skip
        t.recorder.flush()
        return "interrupted"
    return "continue"


def _checkpoint_due(t: Trainer) -> bool:
    k = t.config.train.checkpoint_every_steps
    return k > 0 and t.step % k == 0


def boundary(
    t: Trainer,
    facts: list[c.Command],
    probe: LiveProbe,
    *,
    lifecycle: bool = True,
    controller: bool = False,
) -> None:
    """Facts, then the driver's and the orchestrator's commands: one commit, then projection."""
    assert t.bus is not None and t.orchestrator is not None
    # Outcomes resolved by earlier boundaries' events go first: facts derived from the log
    # alone, recorded before this boundary's checkpoint (a resume from it has seen them) and
    # before a run's closing `TrainingStopped`, which must stay the last event of its log.
    facts = [fact(t, e) for e in t.outcomes.drain(t.step)] + list(facts)
    if not facts and lifecycle and t.replay_source is None and _nothing_due(t, controller):
        return
    commands = list(facts)
    if t.replay_source is not None and facts:
        # Re-executing: facts and lifecycle are matched against the log separately, so a
        # boundary recorded with facts only (a run's last) can go on live after them.
        count_decisions(t, commit(t, facts))
        commands = []
    if lifecycle:
        commands += t.compilation.facts()
        commands += t.driver.commands(t.step, t._touched_seed_states(), probe)
        every = t.config.train.controller_every_steps
        if t.controller is not None and (controller or (every > 0 and t.step % every == 0)):
            commands += [fact(t, e) for e in run_controller(t)]
        commands += t.orchestrator.commands_for_boundary(t.step, t._stats())
    if commands:
        count_decisions(t, commit(t, commands))
    if t.replay_source is not None:
        t.replay_source.after_boundary(t)
    elif lifecycle:
        t.compilation.request()


def _nothing_due(t: Trainer, controller: bool) -> bool:
    """Whether no part of the lifecycle can act at this boundary (most boundaries of a run).

    No seed has events (the driver and the stats cover those only), compilation is idle, the
    controller is not due and nothing is queued (`SeedOrchestrator.quiet_boundary`, which notes
    the boundary as planning an empty queue would): the boundary then commits nothing, and
    skipping the calls that would each find that out saves ~5 µs between two steps (B2).
    """
    assert t.bus is not None and t.orchestrator is not None
    every = t.config.train.controller_every_steps
    if t.controller is not None and (controller or (every > 0 and t.step % every == 0)):
        return False
    return not t.bus.seeds and t.compilation.idle and t.orchestrator.quiet_boundary(t.step)


def commit(t: Trainer, commands: list[c.Command]) -> list[Outcome]:
    """Execute `commands` in one transaction, settle the tickets, project what was written."""
    assert t.bus is not None and t.db is not None and t.orchestrator is not None
    source = t.replay_source
    if source is not None and source.exhausted():
        source.go_live(t)
        source = None
    # The library's file work of the boundaries before (deferred by `project`): the commit in
    # flight has had a training step to land, and the append below would wait for it anyway.
    t.recorder.flush()
    try:
        outcomes = t.bus.execute_all(commands)
    except BaseException as exc:
        t.orchestrator.abort(exc)
        raise
    t.orchestrator.settle(outcomes)
    # Replaying, the bus matched the commands against the log: project up to the last
    # event they matched; the log's later events belong to later boundaries.
    to_seq = None
    if source is not None:
        to_seq = max((s for o in outcomes for s in o.seqs), default=t.projector.last_seq)
    project(t, to_seq, defer=source is None)
    return outcomes


def project(t: Trainer, to_seq: int | None = None, *, defer: bool = False) -> None:
    """Apply the branch's events after the projector's position (up to `to_seq`).

    With `defer`, the library's file work for them waits for the next `recorder.flush`.
    """
    assert t.db is not None and t.bus is not None
    after = t.projector.last_seq
    # The boundary's own events, from the rows its commit wrote (not read back: the commit
    # may still be in flight, `open_store`); any other range is read from the store.
    kept = t.db.appended_after(after, t.bus.branch) if to_seq is None else None
    records = (
        kept
        if kept is not None
        else t.db.read(from_seq=after + 1, to_seq=to_seq, branch=t.bus.branch)
    )
    for rec in records:
        # Read from one branch's view, nothing between `after` and this seq is visible on
        # it: the seqs between belong to other branches.
        recorded = t.recorder.before(rec.event, defer=defer)
        t.projector.apply_visible(rec.seq, rec.event, after=after)
        if recorded is not None:
            recorded()
        after = rec.seq
        if isinstance(rec.event, ev.SeedTrainingStarted):
            t.seed_telemetry.reset(rec.event.seed)


def count_decisions(t: Trainer, outcomes: Sequence[Outcome]) -> None:
    """Note the step of, and count, the decisions `outcomes` recorded."""
    for o in outcomes:
        if any(isinstance(e, ev.AdaptationDecided) for e in o.events):
            t.last_decision_step = t.step
            t.decisions_this_epoch += 1


def run_controller(t: Trainer) -> list[ev.Event]:
    """Queue the controller's decisions on this boundary's telemetry; the facts it records.

    A controller with `take_facts` (the learned one: its `PolicySampled`) hands over what it
    read and drew, recorded in this boundary before the decisions.
    """
    assert t.controller is not None and t.orchestrator is not None
    snapshot = t.telemetry()
    for decision in t.controller.decide(snapshot):
        t.orchestrator.submit(decision, source="controller", telemetry=snapshot.to_dict())
    take = getattr(t.controller, "take_facts", None)
    return list(take()) if take is not None else []


# --- facts ----------------------------------------------------------------------------------


def fact(t: Trainer, event: ev.Event) -> c.RecordFact:
    """`event` as a fact the trainer records at this step."""
    return c.RecordFact(command_id=t._new_id(), step=t.step, event=event)


def checkpoint(t: Trainer, epoch: int, *, snapshot: bool, phase: str = "facts") -> c.RecordFact:
    """A `Checkpointed` fact of the state now (see `esper_es.trainer.checkpoints`)."""
    return fact(t, checkpoint_event(t, epoch, snapshot=snapshot, phase=phase))


def stopped(t: Trainer, reason: str) -> c.RecordFact:
    """The `TrainingStopped` fact for `reason`."""
    return fact(t, ev.TrainingStopped(epoch=t.epoch, step=t.step, reason=reason))
