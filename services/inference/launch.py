"""Starting the MPI world of a multi-rank engine for whoever did not (a user need not know MPI
exists): `dbrx run --engine_dir E` and `dbrx serve inference --engine_dir E` on an engine of N ranks
run themselves again as `mpiexec -n N python -m dbrx_serve ...` (the mpich wheel's mpiexec, else
the one on PATH; `--hostfile` passes through), forward SIGINT and SIGTERM to it, and exit with its
status. Under a launcher already (`mpirun -n N dbrx ...`), rank 0 goes on as the command and every
other rank follows it (executor.follow_main).

Every world started here has NVLink multicast off (world.NVLINK_MULTICAST_OFF); under MPICH's
Hydra it runs with -disable-auto-cleanup, so that a rank's death does not kill rank 0 before it
has told its clients (rank 0 then ends the world itself: world.py; each rank also runs under a
supervisor: supervisor.py).
"""

import contextlib
import importlib.metadata
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from functools import cache

from dbrx_serve.shared.errors import DbrxServeError, InvalidInput
from dbrx_serve.shared.logs import redacted
from dbrx_serve.shared.parent_death import dying_with_parent

from .world import NVLINK_MULTICAST_OFF, launched_by_mpi, launched_rank, prepare_process

log = logging.getLogger("dbrx_serve.inference")


def as_world(argv: list[str], engine_dir: str, hostfile: str | None) -> int | None:
    """None: go on in this process (a one-rank engine, or rank 0 of a launched world); else the exit
    status of this rank's part (a follower) or of the world started here for `dbrx ARGV`."""
    if launched_by_mpi():
        if hostfile:
            log.warning("--hostfile is ignored under mpirun: the launcher's own options place the ranks")
        prepare_process()
        if launched_rank() > 0:
            from .executor import follow_main
            return follow_main()
        return None
    size = engine_world_size(engine_dir)
    return None if size == 1 else run_world(argv, size, hostfile)


def engine_world_size(engine_dir: str) -> int:
    """The engine's ranks from its config.json (1 when it cannot be read: loading then says why)."""
    from .engine_dir import load_engine_dir
    try:
        return load_engine_dir(engine_dir, verify=False).world_size
    except DbrxServeError:
        return 1


def find_mpiexec() -> str:
    """The mpich wheel's mpiexec, else the system's (PATH)."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for file in importlib.metadata.files("mpich") or ():
            if file.name == "mpiexec" and file.locate().is_file():
                return str(file.locate().resolve())
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if found is None:
        raise InvalidInput("no mpiexec found: install the mpich wheel (pip install mpich) or an MPI with "
                           "mpiexec on PATH, to run a multi-rank engine")
    return found


@cache
def is_hydra(mpiexec: str) -> bool:
    """MPICH's process manager (Open MPI's mpirun takes other options)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return "HYDRA" in subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30).stdout
    return False


def world_command(argv: list[str], world_size: int, hostfile: str | None = None,
                  program: tuple[str, ...] = ("-m", "dbrx_serve")) -> list[str]:
    """mpiexec running `python PROGRAM ARGV` on `world_size` ranks."""
    mpiexec = find_mpiexec()
    options = ["-disable-auto-cleanup"] if is_hydra(mpiexec) else []
    if hostfile:
        options += ["-hostfile", hostfile]
    return [mpiexec, *options, "-n", str(world_size), sys.executable, *program, *argv]


def world_environment() -> dict[str, str]:
    return {**os.environ, **NVLINK_MULTICAST_OFF}


def run_world(argv: list[str], world_size: int, hostfile: str | None = None,
              program: tuple[str, ...] = ("-m", "dbrx_serve")) -> int:
    """`dbrx ARGV` (`python PROGRAM ARGV`) as an MPI world of `world_size` ranks; its exit status."""
    command = world_command(argv, world_size, hostfile, program)
    log.info("starting an MPI world of %d ranks: %s", world_size, " ".join(redacted(command)))
    process = subprocess.Popen(dying_with_parent(command), env=world_environment())  # no world outlives us
    with forwarded_signals(process):
        return process.wait()


@contextlib.contextmanager
def forwarded_signals(process: subprocess.Popen):
    """SIGINT and SIGTERM go on to the launcher, which hands them to every rank (rank 0 drains)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda number, frame: process.send_signal(number))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
