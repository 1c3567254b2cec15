"""Data-parallel training (SPEC §11): rank 0 leads, every other rank follows its boundaries.

One writer. Rank 0 runs the ordinary trainer (live, or a replay/resume/rollback `Session`):
it owns the run database, the controller and the lifecycle driver. Every other rank runs a
`Follower`, a trainer with no database that does only what rank 0 tells it, in rank 0's
order, over one broadcast message channel (`esper_es.runtime.ranks`):

- `boot`: the run's config, master seed and host record; the follower builds the same trainer
  (same factory, same seeds).
- `records`: every event rank 0's projector applies (live commits, a replay's recorded
  boundaries, the events a restore walks), with its seq; the follower's projector applies
  the same events in the same order. They ride on the next message, so a step costs one
  broadcast.
- `state`: rank 0's model, optimizer, gradients and RNG states, sent when the trainer is
  wired and again when training starts (after a snapshot was restored): a follower starts
  from exactly rank 0's state whatever its host's own initialisation did.
- `step`: train one step on this rank's shard (`shard_batches`) of the same epoch position.
- `evaluate`: validation; every rank evaluates its part of the validation data
  (`shard_val_batches`) and the loss and metric sums are all-reduced, so the ranks share the
  work rank 0 would otherwise do alone while the others wait.
- `check`: at every `Checkpointed`, all ranks gather digests of their model, optimizer and
  RNG states; a rank that differs from rank 0 stops every rank with `RanksDisagree` naming
  it, before rank 0 records the checkpoint.
- `stop`: the command is over.

Gradients are reduced by an explicit bucketed all-reduce after the backward pass (and after
the seeds' own-loss gradients), not by wrapping the model in `DistributedDataParallel`: the
architecture changes at boundaries (germination adds parameters, a cull removes them), which
would need a new DDP wrapper and reducer each time; the own-loss gradients of TRAINING kernels
come from `torch.autograd.grad`, which DDP's reducer never sees; and `find_unused_parameters`
would be needed for dormant and frozen parts. One flat bucket per dtype gives up DDP's overlap
of communication with the backward pass, which on the models this runs is small (B10). The
step's loss rides in the same bucket, so the loss every rank records (and the driver and
controller read) is the mean over all shards. New parameter groups join every rank's optimizer
at the same step because every rank projects the same `SeedGerminated` at the same boundary.

Seed telemetry (the losses with and without a TRAINING seed) is measured by every rank on its
own shard and averaged before it is folded in, so a decision never depends on one shard.
Floating-point buffers (batch-norm running statistics) are averaged over the ranks after every
step, in the gradients' bucket: every shard counts (DDP's `broadcast_buffers` keeps rank 0's
instead), and a step costs one collective besides rank 0's message (B10 in
docs/benchmarks.md).
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from esper_es.core import events as ev
from esper_es.core.canonical import canonical_bytes
from esper_es.errors import ConfigError, RanksDisagree
from esper_es.nn.fingerprint import model_fingerprint, optimizer_fingerprint
from esper_es.runtime import ranks
from esper_es.runtime.data import num_batches
from esper_es.runtime.device import to_device
from esper_es.runtime.ranks import RankGroup
from esper_es.runtime.rng import (
    capture_rng_state,
    data_order,
    decode_rng_state,
    encode_rng_state,
    restore_rng_state,
    rng_digest,
)
from esper_es.trainer import batches as batching
from esper_es.trainer import evaluation

if TYPE_CHECKING:
    from esper_es.trainer.loop import Trainer

Batch = Any
#: Builds a follower's trainer from rank 0's `boot` message.
TrainerBuilder = Callable[[dict[str, Any]], "Trainer"]


def _tensors(data: Any) -> bool:
    return isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor)


def shard_batches(
    train_data: Any, batch_size: int, master_seed: int, epoch: int, rank: int, world: int
) -> list[Batch]:
    """Rank `rank`'s batches of epoch `epoch`: every `world`-th example of the run's order.

    Every rank gets the same number of examples (the order's tail past a multiple of `world`
    is left out of the epoch, as `DistributedSampler(drop_last=True)` does), so all ranks take
    the same number of steps with batches of the same sizes, and the mean of their gradients
    is the gradient of the whole global batch. Data given as batches (a function of the epoch,
    or a re-iterable) is dealt out batch by batch the same way.
    """
    if _tensors(train_data):
        x, y = train_data
        n = len(x) // world * world
        mine = data_order(master_seed, epoch, len(x))[rank:n:world]
        return [(x[i], y[i]) for i in torch.split(mine, batch_size)]
    every = list(batching.epoch_batches(train_data, batch_size, master_seed, epoch))
    return every[rank : len(every) // world * world : world]


def shard_val_batches(val_data: Any, batch_size: int, rank: int, world: int) -> list[Batch]:
    """Rank `rank`'s part of the validation data: a contiguous `world`-th of the examples
    (every example in exactly one rank's part), or every `world`-th batch of other data."""
    if _tensors(val_data):
        x, y = val_data
        lo, hi = len(x) * rank // world, len(x) * (rank + 1) // world
        return list(batching.val_batches((x[lo:hi], y[lo:hi]), batch_size))
    return list(batching.val_batches(val_data, batch_size))[rank::world]


def shard_steps(train_data: Any, batch_size: int, world: int) -> int:
    """Steps per epoch of each rank (0 if the data is not sized)."""
    if _tensors(train_data):
        return num_batches(len(train_data[0]) // world, batch_size)
    return batching.steps_per_epoch(train_data, batch_size) // world


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def _state_digests(trainer: Trainer, fingerprint: str | None = None) -> bytes:
    """96 bytes: digests of the model fingerprint, optimizer fingerprint and RNG digests."""
    model = fingerprint if fingerprint is not None else model_fingerprint(trainer.model)
    rng = canonical_bytes(rng_digest()).decode("utf-8")
    return _digest(model) + _digest(optimizer_fingerprint(trainer.optimizer)) + _digest(rng)


class RankHooks:
    """What every rank's trainer does differently in a data-parallel run (`Trainer.ranks`)."""

    def __init__(self, group: RankGroup, trainer: Trainer) -> None:
        self.group = group
        self.trainer = trainer
        trainer.ranks = self
        trainer.seed_telemetry.reduce = self.reduce_pair

    @property
    def world_size(self) -> int:
        """How many ranks train."""
        return self.group.world_size

    @property
    def backend(self) -> str:
        """The backend the run records (`RankGroup.reported_backend`)."""
        return self.group.reported_backend

    def epoch_batches(self, epoch: int) -> list[Batch]:
        """This rank's batches of `epoch` (see `shard_batches`)."""
        t = self.trainer
        size = t.config.train.batch_size
        mine = shard_batches(
            t.train_data, size, t.master_seed, epoch, self.group.rank, self.world_size
        )
        return list(batching.placed(mine, t.device))

    def steps_per_epoch(self) -> int:
        """Each rank's steps per epoch."""
        t = self.trainer
        return shard_steps(t.train_data, t.config.train.batch_size, self.world_size)

    def reduce_step(self, loss: Tensor) -> Tensor:
        """After the backward pass: gradients, loss and buffers, each the mean over ranks."""
        model = self.trainer.model
        value = loss.detach().reshape(1).clone()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        buffers = [b for b in model.buffers() if b.is_floating_point()]
        self.group.all_reduce_mean([*grads, value, *buffers])
        return value[0]

    def evaluate(self) -> tuple[float, float | None]:
        """Validation on every rank's part at once; the means over the whole validation set."""
        t = self.trainer
        mine = shard_val_batches(
            t.val_data, t.config.train.val_batch_size, self.group.rank, self.world_size
        )
        sums = evaluation.evaluation_sums(
            t.model, batching.placed(mine, t.device), t.loss_fn, t.metric_fn, t.loss_and_metric
        )
        both = torch.tensor(sums, dtype=torch.float64)
        self.group.all_reduce_mean([both])
        loss_sum, metric_sum, total = (float(v) for v in both)
        return evaluation.means(loss_sum, metric_sum, total, t.metric_fn is not None)

    def reduce_pair(self, pair: tuple[float, float]) -> tuple[float, float]:
        """Seed telemetry measured on every shard, averaged."""
        both = torch.tensor(pair, dtype=torch.float64)
        self.group.all_reduce_mean([both])
        return float(both[0]), float(both[1])

    # Rank 0's side of the protocol; the trainer calls these on whatever rank it runs, and
    # only rank 0's trainer runs the loop that calls them (a follower is driven by `handle`).

    def send_state(self) -> None:
        """Training starts: rank 0 gives every follower its state."""

    def before_step(self, epoch: int, index: int) -> None:
        """A step starts: rank 0 has every follower take it too."""

    def agree(self, fingerprint: str | None = None) -> None:
        """At a `Checkpointed`: every rank's state must be rank 0's."""

    def _compare(self, mine: bytes, step: int) -> None:
        records = self.group.all_gather_bytes(mine)
        names = ("model fingerprint", "optimizer fingerprint", "RNG state")
        for rank, record in enumerate(records):
            if record != records[0]:
                what = [n for i, n in enumerate(names) if record[32 * i : 32 * (i + 1)]
                        != records[0][32 * i : 32 * (i + 1)]]  # fmt: skip
                raise RanksDisagree(rank, step, what)


class Leader(RankHooks):
    """Rank 0's side: tells the followers what to do, in the order it does it."""

    def __init__(self, group: RankGroup, trainer: Trainer) -> None:
        if trainer.config.library.compile:
            raise ConfigError(
                "library.compile",
                "not supported with several ranks (a compiled kernel is read from rank 0's "
                "run database); run with --nproc 1 or compile = false",
            )
        super().__init__(group, trainer)
        self.pending: list[dict[str, Any]] = []
        trainer.projector.on_apply = self._applied

    def _applied(self, seq: int, event: ev.Event, after: int) -> None:
        self.pending.append(
            {"seq": seq, "after": after, "type": event.TYPE, "payload": ev.to_payload(event)}
        )

    def _send(self, op: str, blob: bytes = b"", **fields: Any) -> None:
        records, self.pending = self.pending, []
        self.group.send({"op": op, "records": records, **fields}, blob)

    def boot(self) -> None:
        """Have every follower build this run's trainer, from rank 0's state."""
        t = self.trainer
        self._send(
            "boot", config=t.config.to_dict(), master_seed=t.master_seed, host=t.host_source,
            device=t.device.type,
        )  # fmt: skip
        self.send_state()

    def send_state(self) -> None:
        """Give every follower rank 0's whole training state (after a restore, at the start)."""
        t = self.trainer
        buffer = io.BytesIO()
        grads = {n: p.grad for n, p in t.model.named_parameters() if p.grad is not None}
        torch.save(
            {"model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(), "grads": grads},
            buffer,
        )
        rng = base64.b64encode(encode_rng_state(capture_rng_state())).decode("ascii")
        self._send("state", buffer.getvalue(), rng=rng, step=t.step, epoch=t.epoch)

    def before_step(self, epoch: int, index: int) -> None:
        """Have every follower train on its batch `index` of `epoch` with rank 0."""
        t = self.trainer
        self._send("step", epoch=epoch, index=index, step=t.step, telemetry=t.measures_telemetry)

    def evaluate(self) -> tuple[float, float | None]:
        """Have every follower validate its part with rank 0 (`RankHooks.evaluate`)."""
        self._send("evaluate")
        return super().evaluate()

    def agree(self, fingerprint: str | None = None) -> None:
        """At a `Checkpointed`: every rank's state must be rank 0's (`RanksDisagree`)."""
        t = self.trainer
        self._send("check", step=t.step)
        self._compare(_state_digests(t, fingerprint), t.step)

    def stop(self) -> None:
        """The command is over: followers leave their loop."""
        self._send("stop")


def stop_followers(group: RankGroup) -> None:
    """Rank 0, when no trainer was wired (the command failed early): followers leave too."""
    group.send({"op": "stop", "records": []})


def attach(trainer: Trainer) -> None:
    """Make `trainer` rank 0 of the current process group, if this process is one of several."""
    group = ranks.current()
    if group is None or trainer.ranks is not None:
        return
    Leader(group, trainer).boot()


class Follower(RankHooks):
    """A rank other than 0: a trainer without a run database, driven by rank 0's messages."""

    def __init__(self, group: RankGroup, trainer: Trainer) -> None:
        super().__init__(group, trainer)
        # The controller and the driver run on rank 0 only.
        trainer.controller = None
        self._epoch: int | None = None
        self._batches: list[Batch] = []

    @classmethod
    def serve(cls, group: RankGroup, build: TrainerBuilder) -> int:
        """Follow rank 0 until it stops; the exit code (3 if the ranks disagreed)."""
        follower: Follower | None = None
        disagreed: RanksDisagree | None = None
        while True:
            header, blob = group.receive()
            op = header["op"]
            if op == "stop":
                return 0 if disagreed is None else disagreed.exit_code
            if op == "boot":
                follower = cls(group, build(header))
                continue
            if follower is None:
                raise RuntimeError(f"rank {group.rank}: {op!r} before boot")
            try:
                follower.handle(header, blob)
            except RanksDisagree as exc:
                # Rank 0 raises the same error and stops the command; wait for its `stop`.
                disagreed = exc

    def handle(self, header: dict[str, Any], blob: bytes) -> None:
        """Apply one message of rank 0 (see the module doc)."""
        t = self.trainer
        for rec in header["records"]:
            event = ev.from_payload(rec["type"], rec["payload"])
            t.projector.apply_visible(rec["seq"], event, after=rec["after"])
            if isinstance(event, ev.SeedTrainingStarted):
                t.seed_telemetry.reset(event.seed)
        op = header["op"]
        if op == "step":
            t.step = int(header["step"])
            t.measures_telemetry = bool(header["telemetry"])
            t._train_step(self._batch(int(header["epoch"]), int(header["index"])))
        elif op == "evaluate":
            self.evaluate()
        elif op == "check":
            t.step = int(header["step"])
            self._compare(_state_digests(t), t.step)
        elif op == "state":
            self._load_state(header, blob)

    def _batch(self, epoch: int, index: int) -> Batch:
        if self._epoch != epoch:
            self._epoch, self._batches = epoch, self.epoch_batches(epoch)
        return self._batches[index]

    def _load_state(self, header: dict[str, Any], blob: bytes) -> None:
        t = self.trainer
        state = torch.load(io.BytesIO(blob), weights_only=True, map_location=t.device)
        t.model.load_state_dict(state["model"])
        t.optimizer.load_state_dict(state["optimizer"])
        grads = state["grads"]
        for name, param in t.model.named_parameters():
            param.grad = to_device(grads.get(name), param.device)
        restore_rng_state(decode_rng_state(base64.b64decode(header["rng"])))
        t.step, t.epoch = int(header["step"]), int(header["epoch"])
