"""A watch survives a server restart mid-job and misses no event: a converter server (a real
process) is killed while a job waits in the queue and the SDK watches it; a worker runs the job
while no server is up, a new server comes up on the same port, and the watch resumes after the
last event it saw."""

import signal
import subprocess
import sys
import threading

from dbrx_serve.cli.launcher import wait_for_address
from dbrx_serve.client import Client, JobEvent, RetryPolicy
from dbrx_serve.shared.jobstore import JobStore

WAIT = 120
DBRX = [sys.executable, "-m", "dbrx_serve"]


def converter_server(database_url: str, port: int = 0) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([*DBRX, "serve", "converter", "--port", str(port), "--database_url", database_url],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return process, wait_for_address(process, "converter")


def test_a_watch_resumes_across_a_server_restart_and_misses_no_event(tiny_model_dir, tmp_path):
    database_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    first, address = converter_server(database_url)
    patient = RetryPolicy(max_attempts=200, initial_backoff=0.05, max_backoff=0.5)
    events: list[JobEvent] = []
    queued = threading.Event()
    processes = [first]
    try:
        with Client(address, timeout=WAIT, retry=patient) as client:
            job = client.submit_convert(str(tiny_model_dir), str(tmp_path / "ckpt"), dtype="float32")
            watcher = threading.Thread(target=lambda: [events.append(e) or queued.set() for e in job.watch()])
            watcher.start()
            assert queued.wait(WAIT)  # the watch has seen "queued"; no worker runs yet
            first.send_signal(signal.SIGKILL)
            first.wait(WAIT)
            processes.append(subprocess.Popen([*DBRX, "worker", "converter", "--database_url", database_url,
                                               "--poll_seconds", "0.2"], stdout=subprocess.DEVNULL))
            second, _ = converter_server(database_url, int(address.rsplit(":", 1)[1]))
            processes.append(second)
            watcher.join(WAIT)
            final = client.get_job(job.id)
    finally:
        for process in processes:
            process.kill()
            process.wait(WAIT)
    with JobStore.open(database_url) as store:
        stored = store.events(job.id)
    assert [e.seq for e in events] == [e.seq for e in stored] == list(range(1, len(stored) + 1))
    assert [e.message for e in events] == [e.message for e in stored] and len(events) > 3
    assert final.state == events[-1].state and stored[-1].state.value == "SUCCEEDED"
