"""The trainer (SPEC §5): a deterministic training loop whose every change is an event.

Training runs step by step; between steps is a *boundary*, whose protocol (facts, the
lifecycle driver, the orchestrator, one commit, projection) is `esper_es.trainer.boundary`.

Determinism: threads are pinned and deterministic algorithms switched on first; the global
torch / `random` / numpy RNGs are seeded from the master seed; host weights, data order, kernel
inits and command ids all come from seeds derived from it. The same config and seed give the
same events (apart from `run_id` and `recorded_at`) and the same final fingerprint.

Where the parts live: `boundary` (the boundary protocol), `step` (one optimizer step),
`evaluation`, `batches` (the data walk), `replay_source` (the protocol a re-execution drives
the trainer with), `checkpoints` (what `Checkpointed` records, snapshots), `telemetry` (the
driver's probes and the controller's view), `compilation`, `interrupts` (Ctrl-C, progress),
`ids`, `result`; this file keeps the trainer's state, its set-up and the epoch loop.

Ctrl-C: a SIGINT handler (installed while `run` runs in the main thread) only sets a flag; the
loop stops at the next boundary with a snapshot, a `Checkpointed` and
`TrainingStopped(reason="interrupted")`. A `KeyboardInterrupt` raised by an `on_step` hook
(which runs right after a boundary) stops the same way.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from esper_es import numerics
from esper_es.command_bus import CommandBus, Outcome
from esper_es.config import RunConfig
from esper_es.controller import Controller, Telemetry
from esper_es.core import commands as c
from esper_es.core import events as ev
from esper_es.core.blending import BlendSchedule
from esper_es.core.decider import layer_of
from esper_es.core.decisions import AdaptationDecision, SeedStats
from esper_es.core.ids import IdSource, derive_seed
from esper_es.core.outcomes import OutcomeTracker
from esper_es.library.database import check_library_file
from esper_es.library.recorder import KernelRecorder, recorder_for
from esper_es.nn.kernels import check_kernel_config, derive_init_seed, kernel_spec
from esper_es.nn.placement import SeedLayerSpec, place_seed_layers
from esper_es.nn.projector import Projector
from esper_es.nn.seed_layer import SeedLayer
from esper_es.nn.telemetry import SeedTelemetry
from esper_es.orchestrator import SeedOrchestrator
from esper_es.policy import fitting as policy
from esper_es.policy.learned import controller_for as default_controller
from esper_es.runtime.device import to_device, training_device
from esper_es.runtime.dynamo_free import defer_dynamo_import
from esper_es.runtime.environment import configure_determinism, pin_threads
from esper_es.store.backends import is_postgres
from esper_es.store.protocol import RunStore
from esper_es.store.records import MAIN
from esper_es.trainer import batches as batching
from esper_es.trainer import boundary, evaluation, step
from esper_es.trainer.checkpoints import snapshot_extra
from esper_es.trainer.compilation import KernelCompilation
from esper_es.trainer.distributed import RankHooks
from esper_es.trainer.distributed import attach as attach_ranks
from esper_es.trainer.driver import DriverSettings, LifecycleDriver
from esper_es.trainer.evaluation import LossAndMetric
from esper_es.trainer.ids import RunIds
from esper_es.trainer.interrupts import progress_bar, stop_on_sigint
from esper_es.trainer.own_pass import OwnPass, output_loss
from esper_es.trainer.replay_source import Position, ReplaySource
from esper_es.trainer.result import TrainResult, result_of
from esper_es.trainer.telemetry import (
    RECENT_TRAIN_LOSSES,
    LiveProbe,
    controller_telemetry,
    seed_stats,
)

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
        loss_and_metric: LossAndMetric | None = None,
    ) -> None:
        self.config = config
        #: `RunStarted.host`: how to rebuild the host (a custom host with no factory if None).
        self.host_source: dict[str, Any] | None = dict(
            host_source or {"kind": "custom", "factory": None}
        )
        #: `RunStarted.initial_weights`; written at boundary 0 live, taken from the log replaying.
        self.initial_weights: dict[str, Any] | None = None
        self.master_seed = int(master_seed)
        #: A file path, or a `postgresql://` URL (kept as text: a Path would mangle it).
        self.db_path: str | Path = db_path if is_postgres(db_path) else Path(db_path)
        #: Where the model, its kernels, the batches and the optimizer state live.
        self.device = training_device(config.runtime.device, config.runtime.deterministic)
        self.loss_fn = loss_fn
        self.own_pass = OwnPass(output_loss(loss_fn))
        self.metric_fn = metric_fn
        #: Validation's loss and metric from one forward pass (`evaluation.evaluate`), if known.
        self.loss_and_metric = loss_and_metric
        self.train_data = batching.on_device(train_data, self.device)
        self.val_data = batching.on_device(val_data, self.device)
        self.example_input = to_device(example_input, self.device)
        self.dataset_fingerprint = dataset_fingerprint
        self.progress = progress
        self.on_step = on_step
        self.run_id = run_id or f"run-{uuid.uuid4().hex[:12]}"
        if controller is _DEFAULT:
            controller = default_controller(config.controller, int(master_seed))
        self.controller: Controller | None = controller
        check_kernel_config(config.seeds.kernel_config, "seeds.kernel_config")
        self._configure_runtime()
        # Built on the CPU from its seeds, then moved: the same initial bits on every device.
        self.model = host.to(self.device)
        self.layers: dict[str, SeedLayer] = self._place(host)
        host_params = list(host.parameters())
        factory = optimizer_factory or default_optimizer(config)
        self.optimizer = factory(host_params)
        self.projector = Projector(
            self.model,
            self.optimizer,
            group_options={"lr": config.train.seed_lr, "weight_decay": config.train.weight_decay},
        )
        #: Per-decision outcomes, folded from every projected event (`core.outcomes`).
        self.outcomes = OutcomeTracker(config.controller.record_outcomes)
        self.projector.observers.append(self.outcomes.observe)
        self.seed_telemetry = SeedTelemetry(decay=config.driver.signal_decay)
        #: The last training losses: the instability reads the last `instability_window`, the
        #: controller's within-epoch plateau rule up to 64 (`Telemetry.recent_train_losses`).
        self.recent_losses: deque[float] = deque(
            maxlen=max(config.driver.instability_window, RECENT_TRAIN_LOSSES)
        )
        self.contribution_batch = self._contribution_batch()
        self.step = 0
        self.epoch = 0
        #: The projector position at which the model was last put in training mode (`step`).
        self.train_mode_at: int | None = None
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
        self.db: RunStore | None = None
        self.bus: CommandBus | None = None
        self.orchestrator: SeedOrchestrator | None = None
        self.recorder: KernelRecorder
        #: Background compilation (`[library] compile`; esper_es.trainer.compilation).
        self.compilation = KernelCompilation(self)
        #: This rank's part in a data-parallel run (`esper_es.trainer.distributed`), else None.
        self.ranks: RankHooks | None = None

    # --- setting up -----------------------------------------------------------------------

    def _configure_runtime(self) -> None:
        rt = self.config.runtime
        # First: a portable run refuses here, before anything ran, if its pins came too late.
        numerics.activate(self.config.determinism.numerics)
        pin_threads(rt.threads, rt.interop_threads or None)
        if rt.deterministic:
            configure_determinism()
        defer_dynamo_import()
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
        layers = place_seed_layers(host, specs, self.example_input)
        for layer in layers.values():
            # Own-loss training replaces whatever the isolated pass would give (`own_pass`).
            layer.isolated_training = self.config.train.seed_training != "own_loss"
        return layers

    def _contribution_batch(self) -> Batch:
        n = self.config.driver.contribution_examples
        if isinstance(self.val_data, tuple) and len(self.val_data) == 2:
            x, y = self.val_data
            return (x[:n], y[:n])
        return to_device(next(iter(self.val_data)), self.device)

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
        if self.ranks is not None:
            return self.ranks.steps_per_epoch()
        return batching.steps_per_epoch(self.train_data, self.config.train.batch_size)

    def _epoch_batches(self, epoch: int) -> Iterator[Batch]:
        if self.ranks is not None:
            return iter(self.ranks.epoch_batches(epoch))
        size = self.config.train.batch_size
        walk = batching.epoch_batches(self.train_data, size, self.master_seed, epoch)
        return batching.placed(walk, self.device)

    def evaluate(self) -> tuple[float, float | None]:
        """(mean validation loss, mean validation metric), without side effects."""
        if self.ranks is not None:
            return self.ranks.evaluate()
        val = batching.val_batches(self.val_data, self.config.train.val_batch_size)
        val = batching.placed(val, self.device)
        return evaluation.evaluate(
            self.model, val, self.loss_fn, self.metric_fn, self.loss_and_metric
        )

    # --- the run --------------------------------------------------------------------------

    def run(self, epochs: int | None = None) -> TrainResult:
        """Train for `epochs` (default `config.train.epochs`) and return the result."""
        epochs = self.config.train.epochs if epochs is None else epochs
        started = time.perf_counter()
        if self.config.library.path:
            # Refused before the run database exists, so a bad path leaves nothing behind.
            check_library_file(Path(self.config.library.path), create=True)
        self.db = boundary.open_store(self)
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
        attach_ranks(self)
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
                diverged_ratio=self.config.driver.diverged_ratio,
                evaluation_steps=self.config.driver.evaluation_steps,
                fine_tune_steps=self.config.driver.fine_tune_steps,
            ),
            self.id_sources["driver"],
        )
        self._new_id = self.id_sources["trainer"]
        self._probe = LiveProbe(self)
        policy.bind(self)

    def train_from(self, epochs: int, at: Position | None = None) -> bool:
        """Train up to the end of `epochs`, from the start or from position `at`; True if stopped.

        `at` is where a restored snapshot left the trainer (see `esper_es.replay`): the epoch,
        the batches of it already done and their losses, and whether the lifecycle part of the
        boundary at the current step is still to run.
        """
        interrupted = False
        if self.ranks is not None:
            self.ranks.send_state()
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
                        status = boundary.rest(
                            self, [], last_in_epoch=start == len(batches), final=False
                        )
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
                    if self.ranks is not None:
                        self.ranks.before_step(epoch, k)
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

    # --- the boundary protocol (esper_es.trainer.boundary) and the step (trainer.step) ----

    def _start_boundary(self) -> None:
        boundary.start_boundary(self)

    def _after_step(self, epoch: int, losses: list[float], last_in_epoch: bool, final: bool) -> str:
        return boundary.after_step(self, epoch, losses, last_in_epoch, final)

    def _commit(self, commands: list[c.Command]) -> list[Outcome]:
        return boundary.commit(self, commands)

    def project(self, to_seq: int | None = None) -> None:
        """Apply the branch's events after the projector's position (up to `to_seq`)."""
        boundary.project(self, to_seq)

    def _fact(self, event: ev.Event) -> c.RecordFact:
        return boundary.fact(self, event)

    def _checkpoint(self, epoch: int, *, snapshot: bool, phase: str = "facts") -> c.RecordFact:
        return boundary.checkpoint(self, epoch, snapshot=snapshot, phase=phase)

    def snapshot_extra(self, phase: str) -> dict[str, Any]:
        """The trainer's own state a resume needs besides weights, optimizer and RNG."""
        return snapshot_extra(self, phase)

    def _train_step(self, batch: Batch) -> float:
        return step.train_step(self, batch)

    # --- what the driver, the orchestrator and the controller see --------------------------

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

    def submit(self, decision: AdaptationDecision) -> Any:
        """Queue a user decision for the next boundary; returns the orchestrator's ticket."""
        assert self.orchestrator is not None, "submit while the run is running (e.g. on_step)"
        return self.orchestrator.submit(decision, source="user")

    # --- background compilation ------------------------------------------------------------

    @property
    def compiler(self) -> Any:
        """The background compiler (`esper_es.library.compiler`), once one was started."""
        return self.compilation.compiler

    def close_compiler(self) -> None:
        """Stop the background compiler's worker process."""
        self.compilation.close()

    # --- the end --------------------------------------------------------------------------

    def _result(self, interrupted: bool, started: float) -> TrainResult:
        return result_of(self, interrupted, started)

    # --- plumbing -------------------------------------------------------------------------

    def _sigint(self) -> Any:
        return stop_on_sigint(self)

    def _progress_bar(self, total: int | None) -> Callable[[int | None, float | None], None] | None:
        return progress_bar(self, total)
