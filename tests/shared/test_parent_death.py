"""shared/parent_death.py: the child gets its signal when the parent dies, runs its command in the
process Popen started (pid and exit status), and is started without Python in a forked child, so
that busy gRPC threads in the parent cannot make it abort (launch.run_world failed that way in CI:
`dbrx serve inference`'s world exited with -6)."""

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dbrx_serve.shared.parent_death import dying_with_parent

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
WAIT = 30


def gone(pid: int) -> bool:
    """Ended (a zombie nobody reaped counts: it runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_the_child_gets_the_signal_when_its_parent_dies():
    parent = subprocess.Popen([sys.executable, "-c", f"""
import subprocess, sys, time
from dbrx_serve.shared.parent_death import dying_with_parent
child = subprocess.Popen(dying_with_parent([sys.executable, "-c", "import time; print('up', flush=True); time.sleep({WAIT})"]))
print(child.pid, flush=True)
time.sleep({WAIT})
"""], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert parent.stdout.readline() == "up\n"  # the command runs: the death signal is set
        parent.kill()
        deadline = time.monotonic() + WAIT
        while not gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(child), "the child outlived its parent"
    finally:
        parent.kill()
        parent.wait()


def test_the_command_runs_in_the_started_process_and_its_exit_status_comes_back():
    done = subprocess.Popen(dying_with_parent([sys.executable, "-c", "import os, sys; print(os.getpid()); sys.exit(3)"]),
                            stdout=subprocess.PIPE, text=True)
    assert int(done.stdout.read()) == done.pid and done.wait() == 3


def test_a_parent_dead_before_the_signal_was_set_ends_the_child_and_a_missing_command_says_so():
    command = dying_with_parent([sys.executable, "-c", "print('ran')"])
    command[3] = str(os.getpid() + 1)  # not its parent (this process): as if the parent had died already
    orphan = subprocess.run(command, capture_output=True, text=True, timeout=WAIT)
    assert orphan.returncode == -signal.SIGTERM and "ran" not in orphan.stdout
    missing = subprocess.run(dying_with_parent(["/no/such/program"]), capture_output=True, text=True, timeout=WAIT)
    assert missing.returncode == 1 and "cannot run /no/such/program" in missing.stderr


def test_no_python_runs_in_the_forked_child():
    """The child aborts only when Python runs in it before exec (shared/parent_death.py). The probe, a
    Python fork hook, shows whether it does: it runs under preexec_fn, which this module replaces."""
    probe = """
import os, subprocess, sys
from dbrx_serve.shared.parent_death import dying_with_parent
os.register_at_fork(after_in_child=lambda: os.write(1, b"a fork hook ran in the child\\n"))
subprocess.run(dying_with_parent([sys.executable, "-c", "pass"]), check=True)
if sys.argv[1:] == ["preexec_fn"]:
    subprocess.run([sys.executable, "-c", "pass"], check=True, preexec_fn=lambda: None)
"""
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == ""
    assert "a fork hook ran" in subprocess.run([sys.executable, "-c", probe, "preexec_fn"], capture_output=True,
                                               text=True, check=True).stdout


def test_children_started_beside_busy_grpc_threads_all_run():
    """With preexec_fn, 2 in 100 such children aborted (SIGABRT) before exec here,
    though not every run of them fails that way: the probe above is the deterministic check."""
    server = grpc.server(futures.ThreadPoolExecutor(4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()

    def call() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            while not stop.is_set():
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    callers = [threading.Thread(target=call) for _ in range(4)]
    for caller in callers:
        caller.start()
    try:
        statuses = [subprocess.Popen(dying_with_parent([sys.executable, "-c", "pass"])).wait() for _ in range(60)]
    finally:
        stop.set()
        for caller in callers:
            caller.join()
        server.stop(None)
    assert statuses == [0] * 60
