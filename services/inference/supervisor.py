"""Each rank of an MPI world as the child of a small supervisor process.

MPICH's Hydra SIGKILLs every rank of a host as soon as it reaps one that a signal ended, even under
-disable-auto-cleanup (its proxy's wait loop: WIFSIGNALED -> kill all), so a rank killed by the OOM
killer or by hand would take rank 0 with it before rank 0 could tell its clients. Under an MPI
launcher, `dbrx` therefore runs its command again as a child and waits for it: the child's death,
whatever the signal, becomes the supervisor's ordinary exit (status 128 + signal), and rank 0 lives
to fail its streams, turn health NOT_SERVING and end the world itself (world.py).

The supervisor imports nothing heavy, ignores SIGUSR1 (Hydra's notice that a rank died), hands
SIGINT and SIGTERM on to the child, and the child gets SIGKILL if the supervisor dies
(PR_SET_PDEATHSIG): no rank outlives its supervisor.
"""

import os
import signal
import subprocess
import sys

from dbrx_serve.shared.parent_death import dying_with_parent

SUPERVISED = "DBRX_RANK_SUPERVISED"  # set in the child: it is the rank itself
LAUNCHER_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK")  # world.RANK_VARIABLES (not imported: torch)


def supervise() -> int | None:
    """In a process an MPI launcher started, the first time: run this command line again as a child,
    wait, and return its status (as an exit status: 128 + signal when a signal ended it). None in the
    child, and outside any launcher: go on."""
    if os.environ.get(SUPERVISED) or not any(name in os.environ for name in LAUNCHER_VARIABLES):
        return None
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    pmi_fds = tuple(int(os.environ[name]) for name in ("PMI_FD",) if os.environ.get(name, "").isdigit())
    child = subprocess.Popen(dying_with_parent([sys.executable, *sys.orig_argv[1:]], signal.SIGKILL),
                             env={**os.environ, SUPERVISED: "1"}, pass_fds=pmi_fds)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, frame: child.send_signal(number))
    status = child.wait()
    return status if status >= 0 else 128 - status

