"""The trainer (SPEC §5): a deterministic training loop whose every change is an event.

Training runs step by step; between steps is a *boundary*. At each boundary the trainer
gathers commands, in this order: facts due (`EpochCompleted`, `Checkpointed`,
`TrainingStopped`), the lifecycle driver's commands, then the orchestrator's (queued
decisions from the controller or from users, planned against the live state); it commits them
all with one `CommandBus.execute_all` (one transaction), settles the orchestrator's tickets,
and projects the newly written events, in seq order, into the model and the optimizer. Nothing
else changes the architecture. Every command carries `step` = the number of optimizer steps
done so far.

`Checkpointed` at a boundary is recorded first in its transaction: its fingerprints describe
the model and optimizer after the step's update and before that boundary's lifecycle changes,
i.e. exactly the state at its own seq. A snapshot, when due, is taken at the same moment.

Determinism: threads are pinned and deterministic algorithms switched on first; the global
torch / `random` / numpy RNGs are seeded from the master seed; host weights, data order, kernel
inits and command ids all come from seeds derived from it. The same config and seed give the
same events (apart from `run_id` and `recorded_at`) and the same final fingerprint.

Where the parts live: `replay_source` (the protocol a re-execution drives the trainer with),
`checkpoints` (what `Checkpointed` records, snapshots), `telemetry` (the driver's probes and
the controller's view), `compilation`, `interrupts` (Ctrl-C, progress), `result`; this file
keeps the loop and the boundary protocol.

Ctrl-C: a SIGINT handler (installed while `run` runs in the main thread) only sets a flag; the
loop stops at the next boundary with a snapshot, a `Checkpointed` and
`TrainingStopped(reason="interrupted")`. A `KeyboardInterrupt` raised by an `on_step` hook
(which runs right after a boundary) stops the same way.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from esper_es import numerics
from esper_es.command_bus import CommandBus, Outcome
from esper_es.config import RunConfig
from esper_es.controller import (
    Controller,
    HeuristicController,
    Telemetry,
)
from esper_es.core import commands as c
from esper_es.core import events as ev
from esper_es.core.blending import BlendSchedule
from esper_es.core.decider import layer_of
from esper_es.core.decisions import AdaptationDecision, SeedStats
from esper_es.core.ids import IdSource, derive_seed
from esper_es.core.lifecycle import Stage
from esper_es.library.database import check_library_file
from esper_es.library.recorder import KernelRecorder, recorder_for
from esper_es.nn.kernels import check_kernel_config, derive_init_seed, kernel_spec
from esper_es.nn.placement import SeedLayerSpec, place_seed_layers
from esper_es.nn.projector import Projector
from esper_es.nn.seed_layer import SeedLayer
from esper_es.nn.telemetry import SeedTelemetry
from esper_es.orchestrator import SeedOrchestrator
from esper_es.runtime.environment import capture_environment, configure_determinism, pin_threads
from esper_es.store.database import MAIN, RunDatabase
from esper_es.trainer import batches as batching
from esper_es.trainer.checkpoints import checkpoint_event, snapshot_extra
from esper_es.trainer.compilation import KernelCompilation
from esper_es.trainer.driver import DriverSettings, LifecycleDriver
from esper_es.trainer.ids import RunIds
from esper_es.trainer.initial_weights import record_initial_weights
from esper_es.trainer.interrupts import progress_bar, stop_on_sigint
from esper_es.trainer.replay_source import Position, ReplaySource
from esper_es.trainer.result import TrainResult, result_of
from esper_es.trainer.telemetry import LiveProbe, controller_telemetry, seed_stats

Batch = Any
LossFn = Callable[[nn.Module, Batch], Tensor]
MetricFn = Callable[[nn.Module, Batch], float]
OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
#: `(x, y)` tensors (batched by the trainer in the run's data order), or a function of the
#: epoch (1, 2, …) giving that epoch's batches, or a re-iterable of batches.
TrainData = tuple[Tensor, Tensor] | Callable[[int], Iterable[Batch]] | Iterable[Batch]
ValData = tuple[Tensor, Tensor] | Iterable[Batch]
#: on_step(trainer, step): called right after each boundary; may raise KeyboardInterrupt.
StepHook = Callable[["Trainer", int], None]

_DEFAULT: Any = object()


def default_optimizer(config: RunConfig) -> OptimizerFactory:
    """The `[train]` section's optimizer over the host's parameters."""
    t = config.train

    def make(params: list[nn.Parameter]) -> torch.optim.Optimizer:
        if t.optimizer == "sgd":
            return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)

    return make


class Trainer:
    """Trains a host with seed layers, recording everything in a run database."""

    def __init__(
        self,
        host: nn.Module,
        *,
        config: RunConfig,
        master_seed: int,
        db_path: str | Path,
        train_data: TrainData,
        val_data: ValData,
        loss_fn: LossFn,
        example_input: Any,
        metric_fn: MetricFn | None = None,
        optimizer_factory: OptimizerFactory | None = None,
        controller: Controller | None = _DEFAULT,
        dataset_fingerprint: str | None = None,
        progress: bool = False,
        on_step: StepHook | None = None,
        run_id: str | None = None,
        host_source: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        #: `RunStarted.host`: how to rebuild the host (a custom host with no factory if None).
        self.host_source: dict[str, Any] | None = dict(
            host_source or {"kind": "custom", "factory": None}
        )
        #: `RunStarted.initial_weights`; written at boundary 0 live, taken from the log replaying.
        self.initial_weights: dict[str, Any] | None = None
        self.master_seed = int(master_seed)
        self.db_path = Path(db_path)
        self.loss_fn = loss_fn
        self.metric_fn = metric_fn
        self.train_data = train_data
        self.val_data = val_data
        self.example_input = example_input
        self.dataset_fingerprint = dataset_fingerprint
        self.progress = progress
        self.on_step = on_step
        self.run_id = run_id or f"run-{uuid.uuid4().hex[:12]}"
        if controller is _DEFAULT:
            controller = HeuristicController(config.controller)
        self.controller: Controller | None = controller
        check_kernel_config(config.seeds.kernel_config, "seeds.kernel_config")
        self._configure_runtime()
        self.model = host
        self.layers: dict[str, SeedLayer] = self._place(host)
        host_params = list(host.parameters())
        factory = optimizer_factory or default_optimizer(config)
        self.optimizer = factory(host_params)
        self.projector = Projector(
            self.model,
            self.optimizer,
            group_options={"lr": config.train.seed_lr, "weight_decay": config.train.weight_decay},
        )
        self.seed_telemetry = SeedTelemetry(decay=config.driver.signal_decay)
        self.recent_losses: deque[float] = deque(maxlen=config.driver.instability_window)
        self.contribution_batch = self._contribution_batch()
        self.step = 0
        self.epoch = 0
        self.train_loss_history: list[float] = []
        self.val_loss_history: list[float] = []
        self.val_accuracy_history: list[float] = []
        self.last_decision_step: int | None = None
        self.decisions_this_epoch = 0
        self._stop = False
        self.ids = RunIds(self.master_seed)
        self.id_sources: dict[str, IdSource] = self.ids.sources
        self.replay_source: ReplaySource | None = None
        self.writes_snapshots = True
        #: Whether steps measure the seed signals the lifecycle driver reads. A replay that
        #: applies recorded decisions runs no driver, so it skips them (they change nothing
        #: in the model: eval-mode forward passes).
        self.measures_telemetry = True
        #: The shared kernel library this trainer writes outcomes to. A replay, resume or
        #: rollback reads the run's config from the log, and a path read from a log is never
        #: written unless the user names it again (SPEC §9): `Session` sets it.
        self.library_path: str | None = config.library.path
        #: Why training diverged (a non-finite loss), once it has; the run then stops.
        self.divergence: str | None = None
        self.batches_done = 0
        self.epoch_losses: list[float] = []
        self.db: RunDatabase | None = None
        self.bus: CommandBus | None = None
        self.orchestrator: SeedOrchestrator | None = None
        self.recorder: KernelRecorder
        #: Background compilation (`[library] compile`; esper_es.trainer.compilation).
        self.compilation = KernelCompilation(self)

    # --- setting up -----------------------------------------------------------------------

    def _configure_runtime(self) -> None:
        rt = self.config.runtime
        # First: a portable run refuses here, before anything ran, if its pins came too late.
        numerics.activate(self.config.determinism.numerics)
        pin_threads(rt.threads, rt.interop_threads or None)
        if rt.deterministic:
            configure_determinism()
        # Seeded so that anything a user's host draws (dropout) is a function of the master
        # seed, and so the RNG digests in `Checkpointed` repeat from run to run.
        torch.manual_seed(derive_seed(self.master_seed, "torch_global"))
        random.seed(derive_seed(self.master_seed, "python_global"))
        np.random.seed(derive_seed(self.master_seed, "numpy_global") % 2**32)

    def _place(self, host: nn.Module) -> dict[str, SeedLayer]:
        allowed = self.config.seeds.blueprints or None
        specs = {
            path: SeedLayerSpec(num_seeds=n, blueprints=allowed)
            for path, n in self.config.seeds.layers.items()
        }
        return place_seed_layers(host, specs, self.example_input)

    def _contribution_batch(self) -> Batch:
        n = self.config.driver.contribution_examples
        if isinstance(self.val_data, tuple) and len(self.val_data) == 2:
            x, y = self.val_data
            return (x[:n], y[:n])
        return next(iter(self.val_data))

    def neg_loss(self, model: nn.Module, batch: Batch) -> float:
        """The contribution metric: minus the task loss (higher is better, continuous)."""
        return -float(self.loss_fn(model, batch))

    def _ids(self, purpose: str, branch: str = MAIN) -> IdSource:
        return self.ids.source(purpose, branch)

    def use_branch_ids(self, branch: str) -> None:
        """Issue ids with `branch`'s prefixes from now on (see `esper_es.trainer.ids`)."""
        self.ids.use_branch(branch)

    def canonical_id(self, command_id: str) -> str:
        """`command_id` as main would have issued it (unchanged on main)."""
        return self.ids.canonical(command_id)

    def _germination(
        self, seed: str, blueprint: str, command_id: str
    ) -> tuple[str, int, dict[str, Any]]:
        layer = self.layers[layer_of(seed)]
        init_seed = derive_init_seed(self.master_seed, self.canonical_id(command_id))
        overrides = self.config.seeds.kernel_config.get(blueprint)
        spec = kernel_spec(blueprint, layer.shape_kind, layer.channels, init_seed, overrides)
        return spec.kernel_id, init_seed, dict(spec.config)

    # --- data -----------------------------------------------------------------------------

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (0 if the data is not sized)."""
        return batching.steps_per_epoch(self.train_data, self.config.train.batch_size)

    def _epoch_batches(self, epoch: int) -> Iterator[Batch]:
        size = self.config.train.batch_size
        return batching.epoch_batches(self.train_data, size, self.master_seed, epoch)

    def evaluate(self) -> tuple[float, float | None]:
        """(mean validation loss, mean validation metric), without side effects."""
        val = batching.val_batches(self.val_data, self.config.train.val_batch_size)
        return batching.evaluate(self.model, val, self.loss_fn, self.metric_fn)

    # --- the run --------------------------------------------------------------------------

    def run(self, epochs: int | None = None) -> TrainResult:
        """Train for `epochs` (default `config.train.epochs`) and return the result."""
        epochs = self.config.train.epochs if epochs is None else epochs
        started = time.perf_counter()
        if self.config.library.path:
            # Refused before the run database exists, so a bad path leaves nothing behind.
            check_library_file(Path(self.config.library.path), create=True)
        self.db = RunDatabase.create(self.db_path, self.run_id)
        try:
            with self._sigint():
                return self._run(epochs, started)
        finally:
            self.close_compiler()
            self.close_library()
            self.db.close()

    def close_library(self) -> None:
        """Close the shared kernel library, if this trainer opened one."""
        recorder = getattr(self, "recorder", None)
        if recorder is not None:
            recorder.close()

    def _run(self, epochs: int, started: float) -> TrainResult:
        assert self.db is not None
        self.wire(CommandBus(self.db, self.config.lifecycle))
        self._start_boundary()
        interrupted = self.train_from(epochs)
        return self._result(interrupted, started)

    def wire(self, bus: CommandBus) -> None:
        """Connect the orchestrator and the lifecycle driver to `bus` (live or replaying)."""
        self.bus = bus
        self.recorder = recorder_for(self)
        self.projector.on_kernel_compiled = self.compilation.switch
        self.compilation.prepare()
        self.orchestrator = SeedOrchestrator(
            bus,
            master_seed=self.master_seed,
            germination=self._germination,
            ranking=self.recorder.ranking(),
            ids=self.id_sources["orchestrator"],
        )
        attach = getattr(self.orchestrator, "attach", None)
        if attach is not None:
            attach(self)
        self.driver = LifecycleDriver(
            DriverSettings(
                lifecycle=self.config.lifecycle,
                schedule=BlendSchedule(self.config.blending.kind, self.config.blending.ramp_steps),
                training_patience=self.config.driver.training_patience,
                evaluation_steps=self.config.driver.evaluation_steps,
                fine_tune_steps=self.config.driver.fine_tune_steps,
            ),
            self.id_sources["driver"],
        )
        self._new_id = self.id_sources["trainer"]
        self._probe = LiveProbe(self)

    def _start_boundary(self) -> None:
        """Boundary 0: the run, its seed layers, the host's starting quality, a checkpoint."""
        assert self.db is not None
        if self.replay_source is None:
            self.initial_weights = record_initial_weights(self.db, self.model)
        val_loss0, acc0 = self.evaluate()
        self.val_loss_history.append(val_loss0)
        if acc0 is not None:
            self.val_accuracy_history.append(acc0)
        start_cmds: list[c.Command] = [
            c.StartRun(
                command_id=self._new_id(),
                run_id=self.run_id,
                master_seed=self.master_seed,
                config=self.config.to_dict(),
                dataset_fingerprint=self.dataset_fingerprint,
                environment=capture_environment(),
                host=self.host_source,
                initial_weights=self.initial_weights,
            )
        ]
        consulted = self.recorder.consultation(layer.shape_kind for layer in self.layers.values())
        if consulted is not None:
            start_cmds.append(self._fact(consulted))
        start_cmds += [layer.register_command(self._new_id()) for layer in self.layers.values()]
        start_cmds.append(self._fact(ev.EpochCompleted(
            epoch=0, step=0, train_loss=val_loss0, val_loss=val_loss0, val_accuracy=acc0,
            metrics={"initial": True},
        )))  # fmt: skip
        start_cmds.append(self._checkpoint(0, snapshot=False))
        self._commit(start_cmds)

    def train_from(self, epochs: int, at: Position | None = None) -> bool:
        """Train up to the end of `epochs`, from the start or from position `at`; True if stopped.

        `at` is where a restored snapshot left the trainer (see `esper_es.replay`): the epoch,
        the batches of it already done and their losses, and whether the lifecycle part of the
        boundary at the current step is still to run.
        """
        interrupted = False
        spe = self.steps_per_epoch()
        bar = self._progress_bar(epochs * spe if spe else None)
        first = 1 if at is None else at.epoch
        try:
            for epoch in range(first, epochs + 1):
                self.epoch = epoch
                batches = list(self._epoch_batches(epoch))
                start = 0
                losses: list[float] = []
                if at is not None and epoch == at.epoch:
                    start, losses = at.index, list(at.losses)
                    status = "continue"
                    if at.pending == "lifecycle":
                        status = self._rest([], last_in_epoch=start == len(batches), final=False)
                    elif at.pending == "recorded" and self.replay_source is not None:
                        status = "done" if self.replay_source.apply_boundary(self) else "continue"
                    if status != "continue":
                        interrupted = status == "interrupted"
                        break
                else:
                    self.decisions_this_epoch = 0
                status = "continue"
                for k in range(start, len(batches)):
                    self.epoch_losses = losses
                    loss = self._train_step(batches[k])
                    losses.append(loss)
                    self.step += 1
                    self.batches_done = k + 1
                    last_in_epoch = k == len(batches) - 1
                    final = last_in_epoch and epoch == epochs
                    status = self._after_step(epoch, losses, last_in_epoch, final)
                    if bar is not None:
                        bar(self.step, loss)
                    if status != "continue":
                        break
                if status != "continue":
                    interrupted = status == "interrupted"
                    break
        finally:
            if bar is not None:
                bar(None, None)
        return interrupted

    def _after_step(self, epoch: int, losses: list[float], last_in_epoch: bool, final: bool) -> str:
        """The boundary after a step: `continue`, `ended`, `interrupted`, `diverged` or `done`."""
        source = self.replay_source
        if source is not None:
            if source.recorded:
                return "done" if source.apply_boundary(self) else "continue"
            source.before_boundary(self)
        if self.divergence is not None:
            return self._diverged_stop()
        facts: list[c.Command] = []
        if last_in_epoch:
            train_loss = sum(losses) / len(losses)
            val_loss, acc = self.evaluate()
            if not math.isfinite(val_loss):
                self.divergence = f"validation loss {val_loss} at step {self.step}"
                return self._diverged_stop()
            self.train_loss_history.append(train_loss)
            self.val_loss_history.append(val_loss)
            if acc is not None:
                self.val_accuracy_history.append(acc)
            facts.append(self._fact(ev.EpochCompleted(
                epoch=epoch, step=self.step, train_loss=train_loss,
                val_loss=val_loss, val_accuracy=acc, metrics={"steps": len(losses)},
            )))  # fmt: skip
        if final:
            facts.append(self._checkpoint(epoch, snapshot=True))
            facts.append(self._stopped("completed"))
        elif last_in_epoch:
            every = self.config.train.snapshot_every_epochs
            snap = every > 0 and epoch % every == 0
            facts.append(self._checkpoint(epoch, snapshot=snap))
        elif self._checkpoint_due():
            facts.append(self._checkpoint(epoch, snapshot=False))
        return self._rest(facts, last_in_epoch=last_in_epoch, final=final)

    def _diverged_stop(self) -> str:
        """Record a diverged run's end: its fingerprint, then `TrainingStopped(diverged)`.

        No snapshot (the trainer's histories hold the non-finite loss) and no lifecycle or
        controller work (their telemetry would too); the log stays verifiable, and a rollback
        to an earlier seq continues from before the divergence.
        """
        self._boundary(
            [self._checkpoint(self.epoch, snapshot=False), self._stopped("diverged")],
            self._probe,
            lifecycle=False,
        )
        return "diverged"

    def _rest(self, facts: list[c.Command], *, last_in_epoch: bool, final: bool) -> str:
        """The boundary once its facts are built: lifecycle, commit, hooks and Ctrl-C."""
        self._boundary(facts, self._probe, lifecycle=not final, controller=last_in_epoch)
        if final:
            return "ended"
        source = self.replay_source
        if source is not None and source.finished():
            return "done"
        if self.on_step is not None:
            try:
                self.on_step(self, self.step)
            except KeyboardInterrupt:
                self._stop = True
        if self._stop:
            # The boundary above ran in full, so the stop's snapshot is the state after it.
            self._commit(
                [self._checkpoint(self.epoch, snapshot=True, phase="after"),
                 self._stopped("interrupted")]
            )  # fmt: skip
            return "interrupted"
        return "continue"

    # --- one step and one boundary ---------------------------------------------------------

    def _train_step(self, batch: Batch) -> float:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model, batch)
        loss.backward()  # type: ignore[no-untyped-call]
        if self.config.train.seed_training == "own_loss":
            self._train_seeds_on_own_loss(batch)
        self.optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            # Nothing after this can be recorded faithfully (losses go into canonical JSON,
            # which has no NaN): stop at this boundary instead (`_diverged_stop`).
            self.divergence = self.divergence or f"training loss {value} at step {self.step + 1}"
            return value
        self.recent_losses.append(value)
        every = self.config.driver.observe_every
        if self.measures_telemetry and (self.step + 1) % every == 0:
            for layer in self.layers.values():
                for i in layer.kernel_slots(Stage.TRAINING):
                    seed = f"{layer.name}/{i}"
                    self.seed_telemetry.observe(self.model, seed, batch, self.loss_fn)
        return value

    def _train_seeds_on_own_loss(self, batch: Batch) -> None:
        """Give each TRAINING kernel the gradient of the loss with it blended at alpha 1.

        The straight-through gradient `isolation.isolated` hands a TRAINING kernel is dL/dh at
        the host's own activation h, which the kernel's output never moves: with no feedback the
        kernel keeps following it (measured on digits: the seed's paired advantage goes
        negative, i.e. blending it would hurt). So it is replaced by the gradient of the seed's
        own loss, L(h + k(h)), taken with respect to the kernel's parameters only
        (`autograd.grad` accumulates nothing into the host's `.grad`, and the pass runs in eval
        mode, so batch-norm statistics are not touched): the host's outputs and gradients stay
        exactly as without the seed (L8).
        """
        for layer in self.layers.values():
            for i in layer.kernel_slots(Stage.TRAINING):
                kernel = layer.kernel(i)
                assert kernel is not None  # a TRAINING slot holds its kernel (L4)
                params = [p for p in kernel.parameters() if p.requires_grad]
                modes = [(m, m.training) for m in self.model.modules()]
                try:
                    self.model.eval()
                    with layer.override_alphas({i: 1.0}):
                        own = self.loss_fn(self.model, batch)
                    grads = torch.autograd.grad(own, params, allow_unused=True)
                finally:
                    for m, training in modes:
                        m.training = training
                for p, g in zip(params, grads, strict=True):
                    p.grad = None if g is None else g.detach()

    def _checkpoint_due(self) -> bool:
        k = self.config.train.checkpoint_every_steps
        return k > 0 and self.step % k == 0

    def _boundary(
        self,
        facts: list[c.Command],
        probe: LiveProbe,
        *,
        lifecycle: bool = True,
        controller: bool = False,
    ) -> None:
        assert self.bus is not None and self.orchestrator is not None
        commands = list(facts)
        if self.replay_source is not None and facts:
            # Re-executing: facts and lifecycle are matched against the log separately, so a
            # boundary recorded with facts only (a run's last) can go on live after them.
            self._count_decisions(self._commit(facts))
            commands = []
        if lifecycle:
            commands += self.compilation.facts()
            commands += self.driver.commands(self.step, self._touched_seed_states(), probe)
            every = self.config.train.controller_every_steps
            if self.controller is not None and (
                controller or (every > 0 and self.step % every == 0)
            ):
                self._run_controller()
            commands += self.orchestrator.commands_for_boundary(self.step, self._stats())
        if commands:
            outcomes = self._commit(commands)
            self._count_decisions(outcomes)
        if self.replay_source is not None:
            self.replay_source.after_boundary(self)
        elif lifecycle:
            self.compilation.request()

    # --- background compilation ------------------------------------------------------------

    @property
    def compiler(self) -> Any:
        """The background compiler (`esper_es.library.compiler`), once one was started."""
        return self.compilation.compiler

    def close_compiler(self) -> None:
        """Stop the background compiler's worker process."""
        self.compilation.close()

    def _commit(self, commands: list[c.Command]) -> list[Outcome]:
        assert self.bus is not None and self.db is not None and self.orchestrator is not None
        source = self.replay_source
        if source is not None and source.exhausted():
            source.go_live(self)
            source = None
        try:
            outcomes = self.bus.execute_all(commands)
        except BaseException as exc:
            self.orchestrator.abort(exc)
            raise
        self.orchestrator.settle(outcomes)
        # Replaying, the bus matched the commands against the log: project up to the last
        # event they matched; the log's later events belong to later boundaries.
        to_seq = None
        if source is not None:
            to_seq = max((s for o in outcomes for s in o.seqs), default=self.projector.last_seq)
        self.project(to_seq)
        return outcomes

    def project(self, to_seq: int | None = None) -> None:
        """Apply the branch's events after the projector's position (up to `to_seq`)."""
        assert self.db is not None and self.bus is not None
        after = self.projector.last_seq
        for rec in self.db.read(from_seq=after + 1, to_seq=to_seq, branch=self.bus.branch):
            # Read from one branch's view, nothing between `after` and this seq is visible on
            # it: the seqs between belong to other branches.
            recorded = self.recorder.before(rec.event)
            self.projector.apply_visible(rec.seq, rec.event, after=after)
            if recorded is not None:
                recorded()
            after = rec.seq
            if isinstance(rec.event, ev.SeedTrainingStarted):
                self.seed_telemetry.reset(rec.event.seed)

    def _count_decisions(self, outcomes: Sequence[Outcome]) -> None:
        for o in outcomes:
            if any(isinstance(e, ev.AdaptationDecided) for e in o.events):
                self.last_decision_step = self.step
                self.decisions_this_epoch += 1

    def _touched_seed_states(self) -> list[Any]:
        """The live states of the seeds that have events, in layer and slot order.

        A seed without events is DORMANT and nothing at a boundary acts on it (the driver waits
        for a decision, stats cover kernels only): with many dormant slots, building their
        states every boundary was most of its cost (B1, 128 slots per layer).
        """
        assert self.bus is not None
        known = self.bus.seeds
        return [known[s] for layer in self.layers.values() for s in layer.seed_ids() if s in known]

    def _all_seed_states(self) -> list[Any]:
        assert self.bus is not None
        return [self.bus.seed(s) for layer in self.layers.values() for s in layer.seed_ids()]

    def _stats(self) -> dict[str, SeedStats]:
        return seed_stats(self)

    def telemetry(self) -> Telemetry:
        """The controller's view of this boundary."""
        return controller_telemetry(self)

    def _run_controller(self) -> None:
        assert self.controller is not None and self.orchestrator is not None
        snapshot = self.telemetry()
        for decision in self.controller.decide(snapshot):
            self.orchestrator.submit(decision, source="controller", telemetry=snapshot.to_dict())

    def submit(self, decision: AdaptationDecision) -> Any:
        """Queue a user decision for the next boundary; returns the orchestrator's ticket."""
        assert self.orchestrator is not None, "submit while the run is running (e.g. on_step)"
        return self.orchestrator.submit(decision, source="user")

    # --- facts ----------------------------------------------------------------------------

    def _fact(self, event: ev.Event) -> c.RecordFact:
        return c.RecordFact(command_id=self._new_id(), step=self.step, event=event)

    def _checkpoint(self, epoch: int, *, snapshot: bool, phase: str = "facts") -> c.RecordFact:
        return self._fact(checkpoint_event(self, epoch, snapshot=snapshot, phase=phase))

    def snapshot_extra(self, phase: str) -> dict[str, Any]:
        """The trainer's own state a resume needs besides weights, optimizer and RNG."""
        return snapshot_extra(self, phase)

    def _stopped(self, reason: str) -> c.RecordFact:
        return self._fact(ev.TrainingStopped(epoch=self.epoch, step=self.step, reason=reason))

    # --- the end --------------------------------------------------------------------------

    def _result(self, interrupted: bool, started: float) -> TrainResult:
        return result_of(self, interrupted, started)

    # --- plumbing -------------------------------------------------------------------------

    def _sigint(self) -> Any:
        return stop_on_sigint(self)

    def _progress_bar(self, total: int | None) -> Callable[[int | None, float | None], None] | None:
        return progress_bar(self, total)
