"""The job store failing under a running job, with real worker processes: PostgreSQL
restarted (the worker reconnects and the same attempt completes), a SQLite file locked by
another process past the busy timeout (a clear error; the job completes once it is free)."""

import multiprocessing

import pytest

from dbrx_serve.shared.jobstore import JobState, JobStore, StoreConfig, StoreUnavailable
from tests.faults import WAIT, PostgresCluster, ended, store_held, wait_for
from tests.shared.jobstore.jobstore_procs import KIND, report_until_released

SPAWN = multiprocessing.get_context("spawn")
LEASE_SECONDS = 30.0  # far longer than any outage here: the attempt outlives it


def start_worker(database_url: str, tmp_path, busy_timeout_seconds: float = 30.0):
    """A worker process whose jobs report progress until the test creates the release file."""
    release, log = tmp_path / "release", tmp_path / "worker.log"
    process = SPAWN.Process(target=report_until_released,
                            args=(database_url, str(release), str(log), LEASE_SECONDS, busy_timeout_seconds))
    process.start()
    return process, release, log


def logged(log, text: str) -> bool:
    return log.exists() and text in log.read_text()


@pytest.fixture
def postgres():
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


def test_a_job_survives_a_postgresql_restart_and_its_worker_reconnects(postgres, tmp_path):
    with JobStore(StoreConfig(postgres.url)) as store:
        job = store.submit(KIND, {})
        worker, release, log = start_worker(postgres.url, tmp_path)
        try:
            wait_for(lambda: store.get(job.id).progress > 0, "the job's first progress")
            postgres.stop()
            wait_for(lambda: logged(log, f"the job store {postgres.url} did not answer"),
                     "the worker to find the database gone")
            postgres.start()
            release.touch()
            done = wait_for(lambda: ended(store, job.id), "the job to end")
        finally:
            worker.kill()
            worker.join(WAIT)
    assert (done.state, done.attempts, done.lease_owner) == (JobState.SUCCEEDED, 1, "steady")
    assert done.result["steps"] > 1


def test_a_sqlite_store_locked_past_its_busy_timeout_is_a_clear_error_and_loses_no_job(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    locked = r"stayed locked by another process for more than its busy timeout of 0.2 s \(database is locked\)"
    with JobStore(StoreConfig(url)) as store, JobStore(StoreConfig(url, busy_timeout_seconds=0.2)) as impatient:
        job = store.submit(KIND, {})
        worker, release, log = start_worker(url, tmp_path, busy_timeout_seconds=0.2)
        try:
            wait_for(lambda: store.get(job.id).progress > 0, "the job's first progress")
            with store_held(url, job.id):
                with pytest.raises(StoreUnavailable, match=locked):
                    impatient.submit(KIND, {"another": True})
                wait_for(lambda: logged(log, "stayed locked by another process"), "the worker to meet the lock")
            release.touch()
            done = wait_for(lambda: ended(store, job.id), "the job to end")
        finally:
            worker.kill()
            worker.join(WAIT)
        assert [j.id for j in store.list_jobs()] == [job.id]  # the refused submit wrote nothing
    assert (done.state, done.attempts) == (JobState.SUCCEEDED, 1)
