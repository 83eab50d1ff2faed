"""The MPI world of a multi-rank engine: one process per rank (per GPU; per CPU process in tests).

`mpirun -n WORLD dbrx run|serve inference ...` starts it, or launch.py does for a user who never
heard of MPI. mpi4py gives each process its rank and carries rank 0's commands to the others
(`run` on rank 0, `receive` on the others: open an engine, a step's plan, exit) as buffers: a
step's plan as an int32 array, anything else encoded by wire.py (never pickled, and never through
mpi4py's lower-case methods, which pickle); torch.distributed,
initialised from the same world (rank 0 opens the TCP store and broadcasts its address), moves the
tensors: gloo on the CPU, NCCL for CUDA tensors.

A rank that dies closes its sockets, and whatever gloo operation waits on it fails at once. Beside
the steps' own operations, one gloo group does nothing but wait: rank 0 holds a receive from every
other rank, and each of them one from rank 0. When rank 0's ends in an error, the world is `lost`:
rank 0 calls its `on_lost` callbacks (the engine fails its streams, health goes NOT_SERVING), never
talks MPI again, and ends the world with MPI_Abort as it exits (within ABORT_AFTER_LOSS_SECONDS at
the latest). When another rank's ends in an error (rank 0 died), that rank exits at once.

MPI is imported only here, and only when the process was started by an MPI launcher.
"""

import atexit
import datetime
import faulthandler
import logging
import os
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from dbrx_serve.shared.errors import DbrxServeError, EngineFailed
from dbrx_serve.shared.mapping import Mapping

from . import wire

log = logging.getLogger("dbrx_serve.inference")

SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")  # MPICH's Hydra (and Slurm's PMI), Open MPI
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK")
NVLINK_MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
ABORT_AFTER_LOSS_SECONDS = 15.0  # a rank 0 that has not exited this long after a loss is ended anyway
WATCH_TIMEOUT = datetime.timedelta(days=365)  # the watch group's receives wait for a goodbye or a death
SPIN_SECONDS = 0.002  # a rank waiting for rank 0's next message yields its core this long, then sleeps
GPU_SPIN_SECONDS = 0.1  # on GPUs: a step's message must not wait out a nap (a decode step is ~10 ms)
MAX_NAP_SECONDS = 0.005
LEAVE_SECONDS = 60.0  # a leaving rank that has not exited this long after is ended (leave)
LOSS_NAMED_SECONDS = 1.0  # how long a failed command waits for a watcher to say which rank died
OBJECT, ARRAY = 0, 1  # what a message is: a wire-encoded object, or an int32 array as is (a step)


class WorldLost(EngineFailed):
    """A rank of the world stopped: no step can run again, and the world is ending."""


def launched_size() -> int:
    """How many processes the MPI launcher started (1 when there was none)."""
    return next((int(os.environ[name]) for name in SIZE_VARIABLES if name in os.environ), 1)


def launched_by_mpi() -> bool:
    return any(name in os.environ for name in RANK_VARIABLES)


def launched_rank() -> int:
    return next((int(os.environ[name]) for name in RANK_VARIABLES if name in os.environ), 0)


def prepare_process() -> None:
    """Call from the main thread of a process an MPI launcher started: NVLink multicast off (NCCL,
    symmetric memory, NVSHMEM); SIGUSR1 ignored (Hydra's notice that a rank died, fatal by default:
    the world notices on its own); ranks other than 0 ignore SIGINT and SIGTERM, which the launcher
    forwards to every rank (rank 0 drains and ends the world); then MPI_Init, in this thread, which
    is the one that finalizes MPI at exit."""
    for name, value in NVLINK_MULTICAST_OFF.items():
        os.environ.setdefault(name, value)
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if launched_rank() > 0:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from mpi4py import MPI  # noqa: F401  (MPI_Init)


@dataclass(frozen=True)
class Hello:
    """Rank 0's first word to the others: where torch.distributed meets, or why there is no world."""

    store: tuple[str, int] | None
    backend: str
    refusal: str | None = None


@dataclass(frozen=True)
class Agreement:
    """One rank's part of opening an engine: a count (that its weights loaded, the KV blocks it can
    hold), or why it could not open."""

    count: int | None
    error: str | None


class World:
    def __init__(self, comm, backend: str, hosts: list[tuple[str, int]]):
        """`hosts`: every rank's (host, pid)."""
        self.comm, self.rank, self.size, self.backend = comm, comm.rank, comm.size, backend
        self.spin_seconds = GPU_SPIN_SECONDS if "nccl" in backend else SPIN_SECONDS  # CPU ranks share few cores
        self.local_rank = [host for host, _ in hosts[:self.rank]].count(hosts[self.rank][0])  # among its host's
        self.lock = threading.RLock()  # rank 0: one command (and its collectives) at a time
        self.lost: str | None = None
        self.busy = False  # rank 0: a command's collectives are under way
        self.closing = False
        self.released: list[int] = []  # rank 0: executors to drop on the other ranks
        self.lost_callbacks: list[Callable[[], None]] = []
        self.close_callbacks: list[Callable[[], None]] = []  # rank 0: before the world ends
        self.tp_groups: dict[int, Any] = {}
        self.watch_group = dist.new_group(backend="gloo", timeout=WATCH_TIMEOUT)
        peers = range(1, self.size) if self.rank == 0 else (0,)
        self.watchers = [threading.Thread(target=self.watch, args=(peer,), name=f"world-watch-{peer}", daemon=True)
                         for peer in peers]
        for watcher in self.watchers:
            watcher.start()

    # --- every rank ---

    def device(self, device_type: str) -> torch.device:
        """This rank's device: the CPU, or its GPU on the host (its rank among the host's ranks),
        made the current one (NCCL works on the current device). Not run here: no GPU in CI."""
        if device_type != "cuda":
            return torch.device(device_type)
        device = torch.device("cuda", self.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device

    def tp_group(self, mapping: Mapping):
        """This rank's tensor-parallel group under `mapping` (made, on every rank, the first time)."""
        t = mapping.tp_size
        if t not in self.tp_groups:
            groups = [dist.new_group(list(range(stage * t, (stage + 1) * t))) for stage in range(self.size // t)]
            self.tp_groups[t] = groups[self.rank // t]
        return self.tp_groups[t]

    def agree(self, count: int | None, error: BaseException | None = None) -> int:
        """Every rank's count -> the fewest, the same on every rank; or, when a rank could not open
        the engine, InvalidInput on every rank naming each rank's error."""
        from dbrx_serve.shared.errors import InvalidInput

        parts = allgather(self.comm, Agreement(count, None if error is None else str(error)))
        errors = [f"rank {rank}: {part.error}" for rank, part in enumerate(parts) if part.error is not None]
        if errors:
            raise InvalidInput("; ".join(errors))
        return min(part.count for part in parts)

    def watch(self, peer: int) -> None:
        """Wait on `peer` in the watch group: a goodbye ends the wait quietly, the peer's death in an
        error (rank 0 expects goodbyes only once it has said the world ends)."""
        try:
            dist.recv(torch.zeros(1), src=peer, group=self.watch_group)
            if self.closing or self.rank != 0:
                return
            reason = f"rank {peer} left the world"
        except Exception as error:  # the peer's sockets closed: it died
            if self.closing:
                return
            reason = f"rank {peer} stopped ({short(error)})"
        if self.rank == 0:
            self.lose(reason)
        else:
            log.error("rank %d: %s: exiting", self.rank, reason)
            os._exit(1)

    # --- rank 0 ---

    def run(self, command, work: Callable[[], Any]):
        """Send `command` to the other ranks, then do rank 0's part of it (`work`). A domain error
        all ranks agreed on passes through; any other failure loses the world (WorldLost)."""
        with self.lock:
            self.check()
            try:
                if self.released:
                    self.send(Release(tuple(self.released)))
                    self.released.clear()
                self.send(command)
                self.busy = True
                result = work()
                self.busy = False
                return result
            except DbrxServeError:
                self.busy = False
                raise
            except Exception as error:
                self.await_loss(LOSS_NAMED_SECONDS)  # a watcher names the rank that died, if one did
                what = "a step" if isinstance(command, np.ndarray) else type(command).__name__
                self.lose(f"{what} failed on rank 0 ({short(error)})")
                raise WorldLost(self.lost) from error

    def send(self, message) -> None:
        send(self.comm, message)

    def await_loss(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.lost is None and time.monotonic() < deadline:
            time.sleep(0.01)

    def check(self) -> None:
        if self.lost is not None:
            raise WorldLost(self.lost)

    def release(self, executor_id: int) -> None:
        """An executor rank 0 no longer uses: the others drop theirs with the next command."""
        self.released.append(executor_id)

    def on_close(self, callback: Callable[[], None]) -> None:
        self.close_callbacks.append(callback)

    def on_lost(self, callback: Callable[[], None]) -> None:
        self.lost_callbacks.append(callback)
        if self.lost is not None:
            callback()

    def lose(self, reason: str) -> None:
        """A rank died (or rank 0 could not finish a command): no more MPI from here; the world ends."""
        if self.lost is not None:
            return
        self.lost = f"the MPI world lost a rank: {reason}"
        log.error("%s: open requests fail, and the world ends", self.lost)
        timer = threading.Timer(ABORT_AFTER_LOSS_SECONDS, self.abort)
        timer.daemon = True
        timer.start()
        for callback in self.lost_callbacks:
            callback()

    def abort(self) -> None:
        """End every rank now (MPI_Abort), this one included."""
        logging.shutdown()
        try:
            self.comm.Abort(1)
        finally:
            os._exit(1)

    def close(self) -> None:
        """At rank 0's exit: the others leave and the world ends; a lost world, or one left in the
        middle of a command, is aborted instead."""
        if self.lost is not None or self.busy or not self.lock.acquire(timeout=5.0):
            self.abort()
        faulthandler.dump_traceback_later(LEAVE_SECONDS, exit=True)  # see leave
        try:
            for callback in self.close_callbacks:
                try:
                    callback()
                except Exception:  # the world still ends: the others wait for its Exit
                    log.exception("rank 0: a callback before the world's end failed")
            self.closing = True
            self.send(Exit())
            for peer in range(1, self.size):
                dist.send(torch.zeros(1), dst=peer, group=self.watch_group)
            self.leave()
        finally:
            self.lock.release()

    # --- the other ranks ---

    def receive(self):
        return receive(self.comm, self.spin_seconds)

    def say_goodbye(self) -> None:
        self.closing = True
        dist.send(torch.zeros(1), dst=0, group=self.watch_group)
        self.leave()

    def leave(self) -> None:
        """The process is ending: a teardown (NCCL's, the CUDA graphs') that hangs past
        LEAVE_SECONDS prints every thread's stack and ends the process (status 1)."""
        faulthandler.dump_traceback_later(LEAVE_SECONDS, exit=True)
        for watcher in self.watchers:
            watcher.join(timeout=10.0)
        dist.destroy_process_group()


def send(comm, message) -> None:
    """Rank 0 to every other rank: an int32 array as is (a step's), anything else wire-encoded."""
    if isinstance(message, np.ndarray):
        kind, payload = ARRAY, message.astype(np.int32, copy=False).view(np.uint8)
    else:
        kind, payload = OBJECT, np.frombuffer(wire.encode(message), dtype=np.uint8)
    comm.Ibcast(np.array([kind, payload.nbytes], dtype=np.int64), root=0).Wait()
    comm.Bcast(payload, root=0)


def receive(comm, spin_seconds: float = SPIN_SECONDS):
    """The next message from rank 0, waited for without spinning a core for long: an idle server's
    ranks sleep (MPI's own blocking calls poll at full speed)."""
    header = np.zeros(2, dtype=np.int64)
    request, started, nap = comm.Ibcast(header, root=0), time.monotonic(), 1e-4
    while not request.Test():
        if time.monotonic() - started < spin_seconds:
            os.sched_yield()
        else:
            time.sleep(nap)
            nap = min(2 * nap, MAX_NAP_SECONDS)
    payload = np.empty(int(header[1]), dtype=np.uint8)
    comm.Bcast(payload, root=0)
    return payload.view(np.int32) if header[0] == ARRAY else wire.decode(payload.tobytes())


def allgather(comm, message) -> list:
    """Every rank's `message`, in rank order, on every rank (wire-encoded, gathered as bytes)."""
    payload = np.frombuffer(wire.encode(message), dtype=np.uint8)
    sizes = np.zeros(comm.size, dtype=np.int64)
    comm.Allgather(np.array([payload.nbytes], dtype=np.int64), sizes)
    gathered = np.empty(int(sizes.sum()), dtype=np.uint8)
    comm.Allgatherv(payload, [gathered, sizes.tolist()])
    ends = np.cumsum(sizes)
    return [wire.decode(gathered[end - size:end].tobytes()) for size, end in zip(sizes, ends)]


@dataclass(frozen=True)
class Release:
    """Executors rank 0 dropped: the other ranks free theirs."""

    executor_ids: tuple[int, ...]


@dataclass(frozen=True)
class Exit:
    """The world ends: every rank leaves."""


_world: World | None = None


def start(device_type: str) -> World:
    """Rank 0: the world (made the first time: every rank meets in torch.distributed)."""
    global _world
    if _world is None:
        comm, hosts = _meet()
        backend = "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"
        address = master_address(hosts)
        store = dist.TCPStore(address, int(os.environ.get("MASTER_PORT", 0)), comm.size, is_master=True,
                              wait_for_workers=False)
        send(comm, Hello((address, store.port), backend))
        _world = _init(comm, store, backend, hosts)
        atexit.register(_world.close)
        log.info("MPI world of %d ranks (torch.distributed %s, store %s:%d): pids %s",
                 comm.size, backend, address, store.port, ", ".join(f"{pid}@{host}" for host, pid in hosts))
    return _world


def refuse(message: str) -> None:
    """Rank 0, before any world: the other ranks exit (with status 2), for `message`."""
    if _world is None:
        comm, _ = _meet()
        send(comm, Hello(None, "", message))


def join() -> World | None:
    """Any rank but 0: meet rank 0's world; None when rank 0 refused to start one."""
    comm, hosts = _meet()
    hello: Hello = receive(comm)
    if hello.refusal is not None:
        return None
    store = dist.TCPStore(*hello.store, comm.size, is_master=False)
    return _init(comm, store, hello.backend, hosts)


def _meet():
    prepare_process()
    from mpi4py import MPI  # MPI_Init, unless prepare_process did it

    comm = MPI.COMM_WORLD
    return comm, allgather(comm, (MPI.Get_processor_name(), os.getpid()))


def _init(comm, store, backend: str, hosts: list[tuple[str, int]]) -> World:
    dist.init_process_group(backend, store=store, rank=comm.rank, world_size=comm.size)
    return World(comm, backend, hosts)


def short(error: BaseException) -> str:
    """An error's first sentence, without gloo's source location: 'Connection reset by peer'."""
    text = re.sub(r"^\[[^\]]*\] ", "", str(error).splitlines()[0] if str(error) else repr(error))
    return text.split(". ")[0][:200]


def master_address(hosts: list[tuple[str, int]]) -> str:
    """Where rank 0's TCP store listens: MASTER_ADDR if set, loopback when every rank is on this host,
    else this host's address."""
    if os.environ.get("MASTER_ADDR"):
        return os.environ["MASTER_ADDR"]
    if len({host for host, _ in hosts}) == 1:
        return "127.0.0.1"
    return socket.gethostbyname(socket.gethostname())
