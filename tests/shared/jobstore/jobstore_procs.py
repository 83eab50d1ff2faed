"""Entry points of the worker processes the multi-process tests start (spawned,
so each opens its own store the way a real worker on another host would)."""

import json
import logging
import os
import random
import time

from dbrx_serve.shared.jobstore import JobState, JobStore, StoreConfig, Worker

KIND = "convert"


def recording_handler(log_path: str):
    """Appends (job, owner, start, end) for each run, so the test can look for overlaps."""

    def handle(job, ctx):
        start = time.time()
        for step in range(3):
            time.sleep(random.uniform(0.002, 0.01))
            ctx.progress((step + 1) / 3, f"step {step + 1}")
        with open(log_path, "a") as log:
            log.write(json.dumps({"job": job.id, "owner": ctx.owner, "start": start,
                                  "end": time.time()}) + "\n")
        return {"n": job.spec["n"]}

    return handle


def drain(database_url: str, log_path: str, barrier) -> None:
    """Run jobs until none is queued or running."""
    with JobStore(StoreConfig(database_url)) as store:
        worker = Worker(store, KIND, recording_handler(log_path), owner=f"proc-{os.getpid()}",
                        lease_seconds=5, poll_seconds=0.05)
        barrier.wait()
        while worker.run_once() is not None or _unfinished(store):
            time.sleep(0.01)


def _unfinished(store: JobStore) -> bool:
    return any(store.list_jobs(KIND, state, limit=1) for state in (JobState.QUEUED, JobState.RUNNING))


def hang_in_a_job(database_url: str, started, lease_seconds: float) -> None:
    """Lease a job, say so, then hang (heartbeating) until killed."""
    def handle(job, ctx):
        ctx.progress(0.1, "working")
        started.set()
        time.sleep(600)

    with JobStore(StoreConfig(database_url)) as store:
        Worker(store, KIND, handle, owner="doomed", lease_seconds=lease_seconds, poll_seconds=0.05).run_once()


def open_and_submit(database_url: str, barrier, n: int) -> None:
    """Open the store (which migrates) at the same moment as the others, then use it."""
    barrier.wait()
    with JobStore(StoreConfig(database_url)) as store:
        store.submit(KIND, {"n": n})


def report_until_released(database_url: str, release_path: str, log_path: str, lease_seconds: float,
                          busy_timeout_seconds: float) -> None:
    """Run jobs until killed; each reports progress every 50 ms until `release_path` exists.
    The worker's log goes to `log_path`."""
    logging.basicConfig(filename=log_path, level=logging.INFO)

    def handle(job, ctx):
        steps = 0
        while not os.path.exists(release_path):
            steps += 1
            ctx.progress(0.5, f"step {steps}")
            time.sleep(0.05)
        return {"steps": steps}

    with JobStore(StoreConfig(database_url, busy_timeout_seconds=busy_timeout_seconds)) as store:
        Worker(store, KIND, handle, owner="steady", lease_seconds=lease_seconds, poll_seconds=0.05).run_forever()
