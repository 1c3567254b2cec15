"""The gradient reduction of ranks that all run on this machine, through shared memory (SPEC §11).

Why not gloo here: on a CPU machine gloo's all-reduce moves the bucket over TCP loopback
with its own threads, which need CPU that the ranks' training takes; on this repository's
2-core test machine the 1.3 MB bucket of the width-128 CNN took 4-6 ms a step after the
backward pass (1.25 ms back to back), the largest part of what a second rank cost (B10 in
docs/benchmarks.md). Here every rank copies its bucket into its slot of one shared segment,
waits until every rank has written its slot, and sums the slots itself: no thread, no copy
through the kernel.

- **The segment** is a `memfd` that rank 0 creates and passes to every other rank over a
  Unix socket (`SCM_RIGHTS`): it has no name in any file system, so nothing outlives the
  ranks, also after `kill -9` (the kernel frees it with the last process that maps it).
- **The barrier** is one byte to and from every other rank over a mesh of Unix stream
  sockets (abstract names, found from a random token rank 0 broadcasts through the process
  group, under `--nproc` or `torchrun` alike). A blocking read costs no CPU while a rank
  waits, which matters where ranks share cores with other work; a socket write or read is a
  system call, which orders the slot's stores before the byte on any CPU. A dead peer is
  seen at once: the kernel closes a dead process's sockets, so the read ends (EOF) or the
  write fails, and the wait raises `RankLost`, as gloo's collectives do. A peer's socket can
  outlive it where a process it forked holds a copy, so a wait longer than `_POLL` seconds
  also checks that the peer's process (its pid from `SO_PEERCRED`) is still running. A live
  peer that never arrives (stopped, hung) is `RankLost` after `ranks.TIMEOUT`, gloo's
  timeout.
- **Two sets of slots**, used by alternate calls: a rank writes call `g`'s set only after
  every rank passed call `g - 1`'s barrier, which every rank reaches only after it finished
  reading call `g - 2`'s slots, the same set. So one barrier a call suffices.
- **Rank 0's messages** (`send` / `receive`, the per-step message of
  `esper_es.trainer.distributed`) go over the same sockets instead of a gloo broadcast: a
  follower starts its step as soon as the bytes arrive, without waking gloo's threads. The
  stream from rank 0 then carries messages and barrier bytes interleaved, in the order both
  ends do them, which is the same on every rank (the ranks run the same protocol in
  lockstep, as collectives require anyway).
- **The sum is in rank order**, `((s0 + s1) + s2) + ...`, the same on every rank, so every
  rank ends with the same bits. With 2 ranks each element is one addition, `s0 + s1`, which
  is what gloo's all-reduce computes (floating-point addition commutes): the same bits as
  gloo's. With more ranks gloo's ring sums each chunk in another order; such a run records
  the backend `gloo+shm` (`RankGroup.reported_backend`) and re-executes with this reduction.

Linux only (memfd, abstract sockets); elsewhere, and for ranks on several machines or on
GPUs, the ranks reduce through their process group.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from esper_es.errors import RankLost

#: Byte alignment of every dtype's part of a slot (a cache line).
_ALIGN = 64
#: A slot's first capacity; it doubles as a bigger bucket needs.
_FIRST_CAPACITY = 1 << 20
#: The first byte of a barrier's byte and of a message: a rank out of step is seen, not misread.
_ARRIVED, _MESSAGE = b"A", b"M"
#: Seconds a wait blocks before it checks that the peer's process still runs.
_POLL = 1.0


def _running(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, killed but not yet reaped, does not)."""
    if pid <= 0:
        return True  # in another pid namespace: unknown here, so only the timeout applies
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _peer_pid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[0])


def supported() -> bool:
    """Whether this platform has what the reduction needs (memfd, abstract Unix sockets)."""
    return sys.platform == "linux" and hasattr(os, "memfd_create") and hasattr(socket, "send_fds")


def _address(token: str, rank: int) -> str:
    # A leading NUL byte makes an abstract socket: no file, gone when its listener closes.
    return f"\0esper-es-reduce-{token}-{rank}"


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def unflatten_into(flat: Tensor, group: Sequence[Tensor]) -> None:
    """Copy consecutive parts of `flat` back into the tensors of `group`, in order."""
    offset = 0
    for t in group:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


class SharedReduce:
    """One rank's end of the shared-memory reduction (see the module doc)."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        peers: dict[int, socket.socket],
        fd: int,
        timeout: float,
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self._peers = peers
        self._pids = {peer: _peer_pid(sock) for peer, sock in peers.items()}
        self._timeout = timeout
        for sock in peers.values():
            sock.settimeout(_POLL)
        self._fd = fd
        self._calls = 0
        self._capacity = 0
        self._map: mmap.mmap | None = None
        self._bytes: Tensor | None = None

    # --- setting up ------------------------------------------------------------------------

    @classmethod
    def listen(cls, token: str, rank: int, world_size: int) -> socket.socket:
        """This rank's listening socket; every rank must listen before any connects."""
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(_address(token, rank))
        server.listen(world_size)
        return server

    @classmethod
    def connect(
        cls, server: socket.socket, token: str, rank: int, world_size: int, timeout: float
    ) -> SharedReduce:
        """Connect to every other rank (all listening already) and share rank 0's segment.

        Rank `r` connects to every lower rank and accepts every higher one: a connection
        completes in the listener's backlog before it is accepted, so no rank waits on one
        that waits on it.
        """
        peers: dict[int, socket.socket] = {}
        fd = -1
        try:
            for peer in range(rank):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                peers[peer] = sock
                sock.settimeout(timeout)
                sock.connect(_address(token, peer))
                sock.sendall(struct.pack("<i", rank))
            server.settimeout(timeout)
            for _ in range(rank + 1, world_size):
                sock, _ = server.accept()
                sock.settimeout(timeout)
                peer = cls._accepted(sock, rank, world_size)
                peers[peer] = sock
            if rank == 0:
                fd = os.memfd_create("esper-es-reduce", os.MFD_CLOEXEC)
                for sock in peers.values():
                    socket.send_fds(sock, [b"m"], [fd])
            else:
                _, fds, _, _ = socket.recv_fds(peers[0], 1, 1)
                if len(fds) != 1:
                    raise RankLost(rank, world_size, "rank 0 sent no shared memory")
                fd = fds[0]
        except OSError as exc:
            for sock in peers.values():
                sock.close()
            if fd >= 0:
                os.close(fd)
            raise RankLost(rank, world_size, f"shared-memory reduction setup: {exc}") from exc
        finally:
            server.close()
        return cls(rank, world_size, peers, fd, timeout)

    @staticmethod
    def _accepted(sock: socket.socket, rank: int, world_size: int) -> int:
        # Abstract sockets are reachable by any local process: take only our own user's
        # processes, announcing a rank that is one of ours.
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        uid = struct.unpack("3i", creds)[1]
        raw = sock.recv(4, socket.MSG_WAITALL)
        peer = struct.unpack("<i", raw)[0] if len(raw) == 4 else -1
        if uid != os.getuid() or not rank < peer < world_size:
            sock.close()
            raise RankLost(rank, world_size, "a foreign process joined the reduction")
        return peer

    def close(self) -> None:
        """Close the sockets and unmap the segment (the kernel frees it with the last rank)."""
        for sock in self._peers.values():
            sock.close()
        self._peers = {}
        self._bytes = None
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # --- reducing ----------------------------------------------------------------------------

    def all_reduce_mean(self, tensors: Sequence[Tensor]) -> None:
        """Replace each tensor by its mean across ranks (in place): the sum in rank order,
        divided by the world size, the same bits on every rank."""
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        layout: list[tuple[torch.dtype, list[Tensor], int, int]] = []
        used = 0
        for dtype, group in by_dtype.items():
            count = sum(t.numel() for t in group)
            layout.append((dtype, group, used, count))
            used += _aligned(count * torch.empty((), dtype=dtype).element_size())
        if used > self._capacity:
            self._grow(used)
        mine = self._slot(self._calls % 2, self.rank)
        for dtype, group, start, count in layout:
            flat = mine[start:].view(dtype)[:count]
            offset = 0
            for t in group:
                n = t.numel()
                flat[offset : offset + n].copy_(t.reshape(-1))
                offset += n
        self._barrier()
        slots = [self._slot(self._calls % 2, r) for r in range(self.world_size)]
        self._calls += 1
        for dtype, group, start, count in layout:
            parts = [s[start:].view(dtype)[:count] for s in slots]
            total = parts[0] + parts[1] if len(parts) > 1 else parts[0].clone()
            for part in parts[2:]:
                total.add_(part)
            total.div_(self.world_size)
            unflatten_into(total, group)

    def send(self, message: bytes) -> None:
        """Rank 0: `message` to every other rank."""
        frame = _MESSAGE + struct.pack("<q", len(message)) + message
        for peer in self._peers:
            self._write(peer, frame, "broadcast")

    def receive(self) -> bytes:
        """Any other rank: rank 0's next message."""
        head = self._read(0, 9, "broadcast")
        self._in_step(0, head[:1], _MESSAGE, "broadcast")
        (n,) = struct.unpack("<q", head[1:])
        return self._read(0, n, "broadcast")

    def _in_step(self, peer: int, got: bytes, expected: bytes, what: str) -> None:
        # A rank that left the protocol midway (an exception between two collectives) sends
        # what the other does not expect: stop with an error instead of reading it as data.
        if got != expected:
            raise RankLost(
                self.rank, self.world_size, f"{what}: rank {peer} is out of step with this rank"
            )

    def _write(self, peer: int, data: bytes, what: str) -> None:
        view, sent = memoryview(data), 0
        sock = self._peers[peer]
        since = time.monotonic()
        while sent < len(data):
            try:
                sent += sock.send(view[sent:])
            except TimeoutError as exc:
                self._still_there(peer, since, exc, what)
            except OSError as exc:
                raise self._lost(peer, exc, what) from exc

    def _still_there(self, peer: int, since: float, exc: TimeoutError, what: str) -> None:
        # A blocked wait, every `_POLL` seconds: the peer's process must still run, and
        # within the collective timeout.
        if not _running(self._pids[peer]):
            raise self._lost(peer, None, what) from exc
        if time.monotonic() - since > self._timeout:
            raise self._lost(peer, exc, what) from exc

    def _read(self, peer: int, n: int, what: str) -> bytes:
        out = bytearray(n)
        view, got = memoryview(out), 0
        sock = self._peers[peer]
        since = time.monotonic()
        while got < n:
            try:
                k = sock.recv_into(view[got:])
            except TimeoutError as exc:
                self._still_there(peer, since, exc, what)
                continue
            except OSError as exc:
                raise self._lost(peer, exc, what) from exc
            if k == 0:
                raise self._lost(peer, None, what)
            got += k
        return bytes(out)

    def _slot(self, parity: int, rank: int) -> Tensor:
        assert self._bytes is not None
        start = (parity * self.world_size + rank) * self._capacity
        return self._bytes[start : start + self._capacity]

    def _grow(self, needed: int) -> None:
        # Every rank grows at the same call (the same tensors), after a barrier: no rank
        # still reads a slot of the old layout while another writes the new one.
        if self._map is not None:
            self._barrier()
        capacity = max(self._capacity, _FIRST_CAPACITY)
        while capacity < needed:
            capacity *= 2
        size = 2 * self.world_size * capacity
        # The same size from every rank: growing the file is idempotent, and it is at least
        # this long before this rank maps it.
        if os.fstat(self._fd).st_size < size:
            os.ftruncate(self._fd, size)
        old = self._map
        self._map = mmap.mmap(self._fd, size)
        self._bytes = torch.frombuffer(self._map, dtype=torch.uint8)
        self._capacity = capacity
        if old is not None:
            with contextlib.suppress(BufferError):
                old.close()

    def _barrier(self) -> None:
        """Return once every rank has called it as often; `RankLost` if a rank is gone."""
        for peer in self._peers:
            self._write(peer, _ARRIVED, "all_reduce")
        for peer in self._peers:
            self._in_step(peer, self._read(peer, 1, "all_reduce"), _ARRIVED, "all_reduce")

    def _lost(self, peer: int, exc: OSError | None, what: str = "all_reduce") -> RankLost:
        if isinstance(exc, TimeoutError):
            why = f"rank {peer} did not answer in time"
        elif exc is None:
            why = f"rank {peer} is gone: its process ended"
        else:
            why = f"rank {peer} is gone: {exc}"
        return RankLost(self.rank, self.world_size, f"{what}: {why}")
