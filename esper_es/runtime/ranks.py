"""The ranks of a data-parallel run (SPEC §11): the process group and the few collectives used.

A `RankGroup` wraps one `torch.distributed` process group: gloo on CPU, NCCL when the ranks
train on CUDA devices (`select_backend`). It knows nothing of the trainer; it moves bytes and
flat tensors:

- `send` / `receive`: rank 0 broadcasts a message (a JSON header and an optional binary part)
  to every other rank. A message whose header fits `HEADER_BYTES` costs one broadcast (the
  common case: one per step); a longer one, a second. Ranks with the shared reduction (below)
  send it over its sockets instead, one write per follower.
- `all_reduce_mean`: sums tensors across ranks in one flat bucket per dtype and divides by the
  world size. Every rank ends with the same bits (gloo and NCCL ring all-reduce finish with
  the reduced chunks copied to all ranks), and the same world size sums in the same order
  from run to run. CPU ranks that all run on this machine reduce through shared memory
  instead (`esper_es.runtime.shared_reduce`: gloo's all-reduce was most of what a second
  rank cost, B10); with 2 ranks that gives gloo's bits, so such a group still reports the
  backend `gloo`; with more it reports `gloo+shm`, and a re-execution of a run recorded with
  plain `gloo` reduces through gloo again (`local_reduction`).
- `all_gather_bytes`: one fixed-size record from every rank (fingerprint digests).

A lost rank (killed, crashed) surfaces in the others as a `RuntimeError` from the backend;
every collective turns it into `RankLost`, a typed error the command line reports in one line.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from esper_es.errors import RankLost
from esper_es.runtime import shared_reduce
from esper_es.runtime.shared_reduce import SharedReduce, unflatten_into

#: Bytes of the fixed first broadcast of every message: 8 bytes of header length, 8 of binary
#: length, then the header's JSON (and as much of the rest as fits).
HEADER_BYTES = 2048
_LENGTHS = 16
#: How long a rank waits in a collective for the others (a stuck rank stops the run then).
TIMEOUT = datetime.timedelta(minutes=10)

_current: RankGroup | None = None


def select_backend(device: str = "cpu") -> str:
    """`nccl` for ranks on CUDA devices (where NCCL is built in), else `gloo`."""
    if device.startswith("cuda") and torch.cuda.is_available() and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def torchrun_world() -> tuple[int, int] | None:
    """`(rank, world_size)` when launched by `torchrun` (or any env:// launcher), else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


def ranks_on_this_machine(world_size: int) -> bool:
    """Whether every rank runs on this machine: always for forked ranks, and under torchrun
    when its `LOCAL_WORLD_SIZE` is the whole world."""
    if torchrun_world() is None:
        return True
    return os.environ.get("LOCAL_WORLD_SIZE") == str(world_size)


def local_reduction(
    backend: str, world_size: int, local: bool, recorded_backend: str | None = None
) -> bool:
    """Whether the group reduces through shared memory: CPU (gloo) ranks all on this machine,
    on a platform that has it, unless the run being re-executed recorded plain gloo on more
    than 2 ranks (whose sums the shared reduction would order differently)."""
    if backend != "gloo" or not local or world_size < 2 or not shared_reduce.supported():
        return False
    return world_size == 2 or recorded_backend in (None, SHARED_BACKEND)


#: The backend a group of more than 2 ranks reducing through shared memory reports.
SHARED_BACKEND = "gloo+shm"


class RankGroup:
    """One rank's view of the process group (see the module doc)."""

    def __init__(self, rank: int, world_size: int, backend: str, device: str = "cpu") -> None:
        self.rank = rank
        self.world_size = world_size
        self.backend = backend
        self.device = torch.device(device)
        self.shared: SharedReduce | None = None

    @property
    def reported_backend(self) -> str:
        """The backend a run records (`RunStarted.backend`): `gloo+shm` where the shared
        reduction sums in another order than gloo would (more than 2 ranks)."""
        if self.shared is not None and self.world_size > 2:
            return SHARED_BACKEND
        return self.backend

    @property
    def leader(self) -> bool:
        """Rank 0: the one that owns the run database, the controller and the driver."""
        return self.rank == 0

    @classmethod
    def initialize(
        cls,
        rank: int,
        world_size: int,
        *,
        init_method: str = "env://",
        device: str = "cpu",
        local: bool = False,
        recorded_backend: str | None = None,
    ) -> RankGroup:
        """Join the process group (rank `rank` of `world_size`) and return this rank's view.

        `local`: every rank runs on this machine; `recorded_backend`: the backend of the run
        a command re-executes (`local_reduction`).
        """
        backend = select_backend(device)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
            device = f"cuda:{torch.cuda.current_device()}"
        dist.init_process_group(
            backend, init_method=init_method, rank=rank, world_size=world_size, timeout=TIMEOUT
        )
        group = cls(rank, world_size, backend, device)
        if backend == "gloo" and group._all_agree(
            local_reduction(backend, world_size, local, recorded_backend)
        ):
            group.shared = group._connect_shared()
        return group

    def _all_agree(self, mine: bool) -> bool:
        # Every rank must take the same path (a rank of a torchrun world may see another
        # node's count, or not read the run's record): shared only if every rank can.
        flag = torch.tensor([int(mine)], dtype=torch.int32)
        with self._collective("all_reduce"):
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _connect_shared(self) -> SharedReduce:
        # Rank 0's random token names every rank's listening socket: ranks of another run on
        # this machine never meet these.
        token = torch.zeros(16, dtype=torch.uint8)
        if self.leader:
            token.copy_(torch.frombuffer(bytearray(os.urandom(16)), dtype=torch.uint8))
        self._broadcast(token)
        name = token.numpy().tobytes().hex()
        server = SharedReduce.listen(name, self.rank, self.world_size)
        try:
            with self._collective("barrier"):
                dist.barrier()
        except RankLost:
            server.close()
            raise
        return SharedReduce.connect(
            server, name, self.rank, self.world_size, TIMEOUT.total_seconds()
        )

    def close(self) -> None:
        """Leave the process group (and the shared reduction)."""
        if self.shared is not None:
            self.shared.close()
            self.shared = None
        with contextlib.suppress(RuntimeError, ValueError):
            dist.destroy_process_group()

    # --- messages from rank 0 --------------------------------------------------------------

    def send(self, header: dict[str, Any], blob: bytes = b"") -> None:
        """Rank 0: broadcast `header` (JSON) and `blob` to every other rank."""
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        body = text + blob
        first = bytearray(HEADER_BYTES)
        first[0:8] = len(text).to_bytes(8, "little")
        first[8:16] = len(blob).to_bytes(8, "little")
        head = body[: HEADER_BYTES - _LENGTHS]
        first[_LENGTHS : _LENGTHS + len(head)] = head
        if self.shared is not None:
            self.shared.send(bytes(first[:_LENGTHS]) + body)
            return
        self._broadcast(torch.frombuffer(first, dtype=torch.uint8))
        rest = body[len(head) :]
        if rest:
            self._broadcast(torch.frombuffer(bytearray(rest), dtype=torch.uint8))

    def receive(self) -> tuple[dict[str, Any], bytes]:
        """Any other rank: the next message rank 0 sent, as `(header, blob)`."""
        if self.shared is not None:
            raw = self.shared.receive()
            n_text = int.from_bytes(raw[0:8], "little")
            header: dict[str, Any] = json.loads(raw[_LENGTHS : _LENGTHS + n_text].decode("utf-8"))
            return header, raw[_LENGTHS + n_text :]
        first = torch.empty(HEADER_BYTES, dtype=torch.uint8)
        self._broadcast(first)
        raw = first.numpy().tobytes()
        n_text = int.from_bytes(raw[0:8], "little")
        n_blob = int.from_bytes(raw[8:16], "little")
        body = raw[_LENGTHS : _LENGTHS + min(n_text + n_blob, HEADER_BYTES - _LENGTHS)]
        missing = n_text + n_blob - len(body)
        if missing > 0:
            rest = torch.empty(missing, dtype=torch.uint8)
            self._broadcast(rest)
            body += rest.numpy().tobytes()
        header = json.loads(body[:n_text].decode("utf-8"))
        return header, body[n_text:]

    def _broadcast(self, tensor: Tensor) -> None:
        on = tensor.to(self.device) if self.device.type != "cpu" else tensor
        with self._collective("broadcast"):
            dist.broadcast(on, src=0)
        if on is not tensor:
            tensor.copy_(on.cpu())

    # --- tensors -----------------------------------------------------------------------------

    def all_reduce_mean(self, tensors: Sequence[Tensor]) -> None:
        """Replace each tensor by its mean across ranks (in place), one bucket per dtype."""
        if self.shared is not None:
            self.shared.all_reduce_mean(tensors)
            return
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group]).to(self.device)
            with self._collective("all_reduce"):
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(self.world_size)
            unflatten_into(flat, group)

    def all_gather_bytes(self, record: bytes) -> list[bytes]:
        """Every rank's `record` (all of one length), in rank order."""
        mine = torch.frombuffer(bytearray(record), dtype=torch.uint8).to(self.device)
        out = [torch.empty_like(mine) for _ in range(self.world_size)]
        with self._collective("all_gather"):
            dist.all_gather(out, mine)
        return [t.cpu().numpy().tobytes() for t in out]

    @contextlib.contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        try:
            yield
        except RuntimeError as exc:
            raise RankLost(self.rank, self.world_size, f"{what}: {exc}") from exc


def current() -> RankGroup | None:
    """The process group this process runs in, if it is one of several ranks."""
    return _current


@contextlib.contextmanager
def active(group: RankGroup) -> Iterator[RankGroup]:
    """Make `group` the current one (trainers built and wired inside join it)."""
    global _current
    previous, _current = _current, group
    try:
        yield group
    finally:
        _current = previous
