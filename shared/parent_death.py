"""Child processes that die with their parent, started without running Python in a forked child.

subprocess's `preexec_fn` runs Python in the forked child before exec. With gRPC threads busy in
the parent (a server, a client), that child now and then aborts before exec, in gRPC's event engine
(SIGABRT: 2 children in 100 with four threads calling a local server; none in 200 forked with
subprocess's `user=`, which forks but runs no Python in the child; none in 300 started plainly, by
vfork). So the child sets its death signal itself: the command runs as `python -m
dbrx_serve.shared.parent_death PARENT SIGNAL COMMAND...`, which sets Linux's PR_SET_PDEATHSIG (kept
across exec), makes sure PARENT has not died already, and execs COMMAND in the same process (same
pid: signals sent to the child reach COMMAND). tests/shared/test_parent_death.py tests each part.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def dying_with_parent(command: list[str], sig: int = signal.SIGTERM) -> list[str]:
    """`command` as run so that it gets `sig` when this process's thread that starts it dies
    (Linux; elsewhere `command` as it is)."""
    if sys.platform != "linux":
        return command
    return [sys.executable, "-m", "dbrx_serve.shared.parent_death", str(os.getpid()), str(int(sig)), *command]


def exec_dying_with_parent(parent: int, sig: int, command: list[str]) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:  # it died before the signal was set: nothing would send it now
        os.kill(os.getpid(), sig)
        sys.exit(128 + sig)
    try:
        os.execvp(command[0], command)
    except OSError as error:
        sys.exit(f"cannot run {command[0]}: {error}")


if __name__ == "__main__":
    exec_dying_with_parent(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
