"""Several real worker processes against one database: lease exclusivity and
recovery from a SIGKILLed worker."""

import json
import multiprocessing
import os
import signal
import time

from dbrx_serve.shared.jobstore import JobState, Worker
from tests.shared.jobstore.jobstore_procs import KIND, drain, hang_in_a_job

SPAWN = multiprocessing.get_context("spawn")
NUM_PROCESSES = 3
NUM_JOBS = 30


def start(target, *args):
    process = SPAWN.Process(target=target, args=args)
    process.start()
    return process


def join_all(processes, timeout=120):
    for process in processes:
        process.join(timeout)
    return [process.exitcode for process in processes]


def read_runs(path):
    with open(path) as log:
        return [json.loads(line) for line in log]


def test_worker_processes_never_run_a_job_twice(store, database_url, tmp_path):
    jobs = [store.submit(KIND, {"n": n}) for n in range(NUM_JOBS)]
    barrier = SPAWN.Barrier(NUM_PROCESSES)
    log_path = str(tmp_path / "runs.jsonl")
    assert join_all([start(drain, database_url, log_path, barrier) for _ in range(NUM_PROCESSES)]) == [0] * 3

    runs = read_runs(log_path)
    by_job = {}
    for run in runs:
        by_job.setdefault(run["job"], []).append(run)
    assert sorted(by_job) == sorted(job.id for job in jobs)
    assert all(len(job_runs) == 1 for job_runs in by_job.values()), "a job ran more than once"
    ordered = sorted(runs, key=lambda r: (r["job"], r["start"]))
    overlaps = [(a, b) for a, b in zip(ordered, ordered[1:]) if a["job"] == b["job"] and b["start"] < a["end"]]
    assert overlaps == []
    final = [store.get(job.id) for job in jobs]
    assert {(j.state, j.attempts) for j in final} == {(JobState.SUCCEEDED, 1)}
    assert [j.result for j in final] == [{"n": n} for n in range(NUM_JOBS)]
    assert all(j.lease_owner == by_job[j.id][0]["owner"] for j in final)


def test_a_sigkilled_workers_job_is_finished_by_another_worker(store, database_url):
    job = store.submit(KIND, {"n": 7}, max_attempts=3)
    started = SPAWN.Event()
    doomed = start(hang_in_a_job, database_url, started, 1.0)
    assert started.wait(60), "the first worker never started the job"
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.join(30)
    assert doomed.exitcode == -signal.SIGKILL
    assert store.get(job.id).lease_owner == "doomed"

    rescuer = Worker(store, KIND, lambda job, ctx: {"rescued": job.spec["n"]}, owner="rescuer",
                     lease_seconds=1.0, poll_seconds=0.05)
    finished = None
    while finished is None:  # nothing to lease until the dead worker's lease expires
        finished = rescuer.run_once()
        time.sleep(0.05)
    assert (finished.id, finished.state, finished.attempts) == (job.id, JobState.SUCCEEDED, 2)
    assert (finished.lease_owner, finished.result) == ("rescuer", {"rescued": 7})
    assert "worker doomed stopped heartbeating" in finished.last_error
    attempts = [e.message for e in store.events(job.id) if e.message.startswith("attempt")]
    assert attempts[0] == "attempt 1 of 3 started by doomed"
    assert attempts[1].startswith("attempt 1 of 3 failed, will retry: worker doomed stopped heartbeating")
    assert attempts[2:] == ["attempt 2 of 3 started by rescuer"]
