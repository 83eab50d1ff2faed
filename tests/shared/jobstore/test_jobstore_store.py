"""The job store on a real database: submit, idempotency, leasing, expiry, retries, cancel, events."""

import threading
import time

import pytest

from dbrx_serve.shared.errors import BadState, InvalidInput, NotFound
from dbrx_serve.shared.jobstore import JobState, LeaseLost, StoreConfig, default_database_url

KIND = "convert"


def lease(store, owner="w1", seconds=30.0):
    return store.lease(KIND, owner, seconds)


def expire(seconds: float) -> None:
    """Wait out a lease that nobody heartbeats."""
    time.sleep(seconds + 0.2)


def test_submit_then_get_returns_the_queued_job_and_its_first_event(store):
    job = store.submit(KIND, {"model_dir": "/m"}, output_dir="/out")
    got = store.get(job.id)
    assert got == job
    assert (got.state, got.attempts, got.progress, got.spec, got.output_dir) == (JobState.QUEUED, 0, 0.0,
                                                                                 {"model_dir": "/m"}, "/out")
    assert [(e.seq, e.state) for e in store.events(job.id)] == [(1, JobState.QUEUED)]


def test_two_live_jobs_never_write_the_same_output(store):
    first = store.submit(KIND, {"a": 1}, output_dir="/ckpt")
    with pytest.raises(BadState, match="already writes /ckpt"):
        store.submit("build", {"a": 2}, output_dir="/ckpt")
    store.cancel(first.id)
    assert store.submit(KIND, {"a": 3}, output_dir="/ckpt").state is JobState.QUEUED


def test_a_second_submit_with_the_same_key_returns_the_same_job(store):
    first = store.submit(KIND, {"a": 1}, idempotency_key="key-1")
    again = store.submit(KIND, {"a": 1}, idempotency_key="key-1")
    with pytest.raises(BadState, match="used for job .* with other options"):
        store.submit(KIND, {"a": 2}, idempotency_key="key-1")
    other_kind = store.submit("build", {"a": 1}, idempotency_key="key-1")
    no_key = [store.submit(KIND, {"a": 1}) for _ in range(2)]
    assert again == first and again.spec == {"a": 1}
    assert other_kind.id != first.id
    assert no_key[0].id != no_key[1].id
    assert len(store.list_jobs(KIND)) == 3


def test_concurrent_submits_with_one_key_make_one_job(store):
    ids, barrier = [], threading.Barrier(6)

    def submit():
        barrier.wait()
        ids.append(store.submit(KIND, {"n": 1}, idempotency_key="same").id)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 6 and len(set(ids)) == 1
    assert len(store.list_jobs(KIND)) == 1


def test_unknown_and_malformed_job_ids(store):
    with pytest.raises(NotFound, match="no job"):
        store.get("00000000-0000-0000-0000-000000000000")
    with pytest.raises(InvalidInput, match="not a UUID"):
        store.get("not-a-uuid")
    with pytest.raises(InvalidInput, match="not a UUID"):
        store.cancel("")


def test_bad_submissions_are_refused(store):
    with pytest.raises(InvalidInput, match="JSON"):
        store.submit(KIND, {"path": object()})
    with pytest.raises(InvalidInput, match="max_attempts"):
        store.submit(KIND, {}, max_attempts=0)
    with pytest.raises(InvalidInput, match="kind"):
        store.submit("", {})
    with pytest.raises(InvalidInput, match="idempotency key of 256 characters is over the 255 allowed"):
        store.submit(KIND, {}, idempotency_key="k" * 256)
    assert store.list_jobs() == []
    store.submit(KIND, {}, idempotency_key="k" * 255)


def test_lease_takes_the_oldest_queued_job_of_its_kind(store):
    assert lease(store) is None
    first, second = store.submit(KIND, {"n": 1}), store.submit(KIND, {"n": 2})
    store.submit("build", {"n": 3})
    leased = lease(store, "w1")
    assert (leased.id, leased.state, leased.attempts, leased.lease_owner) == (first.id, JobState.RUNNING, 1, "w1")
    assert leased.lease_expires_at > leased.heartbeat_at
    assert lease(store, "w2").id == second.id
    assert lease(store, "w3") is None


def test_only_the_lease_owner_may_heartbeat_report_or_finish(store):
    job = store.submit(KIND, {})
    lease(store, "w1")
    assert store.heartbeat(job.id, "w1", 30) is False
    for call in (lambda: store.heartbeat(job.id, "w2", 30),
                 lambda: store.progress(job.id, "w2", 0.5, "x", 30),
                 lambda: store.complete(job.id, "w2", {}),
                 lambda: store.fail(job.id, "w2", "boom", retry=True),
                 lambda: store.confirm_cancel(job.id, "w2")):
        with pytest.raises(LeaseLost, match="no longer leased by w2"):
            call()
    done = store.complete(job.id, "w1", {"files": 2})
    assert (done.state, done.result, done.progress) == (JobState.SUCCEEDED, {"files": 2}, 1.0)
    with pytest.raises(LeaseLost):
        store.heartbeat(job.id, "w1", 30)


def test_an_expired_lease_is_taken_by_another_worker_with_one_more_attempt(store):
    job = store.submit(KIND, {})
    lease(store, "dead", seconds=0.5)
    assert lease(store, "w2") is None  # still leased
    expire(0.5)
    retaken = lease(store, "w2")
    assert (retaken.id, retaken.attempts, retaken.lease_owner) == (job.id, 2, "w2")
    assert "dead stopped heartbeating" in retaken.last_error
    with pytest.raises(LeaseLost):
        store.heartbeat(job.id, "dead", 30)
    with pytest.raises(LeaseLost):
        store.complete(job.id, "dead", {})
    assert store.complete(job.id, "w2", {}).state == JobState.SUCCEEDED


def test_expiries_past_max_attempts_fail_the_job_with_the_last_error(store):
    job = store.submit(KIND, {}, max_attempts=2)
    for owner in ("w1", "w2"):
        assert lease(store, owner, seconds=0.3).id == job.id
        expire(0.3)
    assert lease(store, "w3") is None
    failed = store.get(job.id)
    assert (failed.state, failed.attempts) == (JobState.FAILED, 2)
    assert failed.message.startswith("failed after 2 attempts; last error: worker w2 stopped heartbeating")
    assert failed.finished_at is not None


def test_expire_leases_queues_dead_workers_jobs_again_or_ends_them(store):
    """What a job server does on its own, with no worker left to lease: no job stays RUNNING."""
    retried, last, cancelled = (store.submit(KIND, {"n": n}, max_attempts=m) for n, m in ((1, 2), (2, 1), (3, 2)))
    for _ in range(3):
        lease(store, "dead", seconds=0.3)
    store.cancel(cancelled.id)
    assert store.expire_leases(KIND) == []  # nothing has expired yet
    expire(0.3)
    assert {job.id for job in store.expire_leases(KIND)} == {retried.id, last.id, cancelled.id}
    states = {job.id: (job.state, job.lease_owner) for job in store.list_jobs(KIND)}
    assert states == {retried.id: (JobState.QUEUED, None), last.id: (JobState.FAILED, "dead"),
                      cancelled.id: (JobState.CANCELLED, "dead")}
    assert store.get(retried.id).message.startswith("attempt 1 of 2 failed, will retry: worker dead stopped")
    assert store.get(last.id).message.startswith("failed after 1 attempt; last error: worker dead stopped")
    assert store.expire_leases(KIND) == []


def test_failed_attempts_are_retried_until_max_attempts(store):
    job = store.submit(KIND, {}, max_attempts=3)
    for attempt in (1, 2, 3):
        assert lease(store).attempts == attempt
        after = store.fail(job.id, "w1", f"OSError: disk hiccup {attempt}", retry=True)
    assert (after.state, after.attempts) == (JobState.FAILED, 3)
    assert after.message == "failed after 3 attempts; last error: OSError: disk hiccup 3"
    assert lease(store) is None


def test_a_retried_attempt_goes_back_to_the_queue(store):
    job = store.submit(KIND, {})
    lease(store)
    requeued = store.fail(job.id, "w1", "RuntimeError: flaky", retry=True)
    assert (requeued.state, requeued.lease_owner) == (JobState.QUEUED, None)
    assert "will retry: RuntimeError: flaky" in requeued.message


def test_a_domain_failure_is_final(store):
    job = store.submit(KIND, {}, max_attempts=3)
    lease(store)
    failed = store.fail(job.id, "w1", "config.json is not a DBRX config", retry=False)
    assert (failed.state, failed.attempts, failed.message) == (JobState.FAILED, 1, "config.json is not a DBRX config")
    assert lease(store) is None


def test_cancel_of_a_queued_job_is_immediate(store):
    job = store.submit(KIND, {})
    cancelled = store.cancel(job.id)
    assert (cancelled.state, cancelled.finished_at is not None) == (JobState.CANCELLED, True)
    assert lease(store) is None
    assert store.cancel(job.id) == cancelled  # an ended job is left as it is


def test_cancel_of_a_running_job_is_a_request_the_worker_confirms(store):
    job = store.submit(KIND, {})
    lease(store)
    requested = store.cancel(job.id)
    assert (requested.state, requested.cancel_requested) == (JobState.RUNNING, True)
    assert store.heartbeat(job.id, "w1", 30) is True
    assert store.progress(job.id, "w1", 0.5, "half", 30) is True
    assert store.confirm_cancel(job.id, "w1").state == JobState.CANCELLED


def test_a_dead_workers_job_with_a_cancel_request_ends_cancelled(store):
    job = store.submit(KIND, {})
    lease(store, "dead", seconds=0.3)
    store.cancel(job.id)
    expire(0.3)
    assert lease(store, "w2") is None
    assert store.get(job.id).state == JobState.CANCELLED


def test_every_change_is_an_event_and_watch_ends_with_the_final_one(store):
    job = store.submit(KIND, {})
    lease(store)
    for step in (1, 2, 3):
        store.progress(job.id, "w1", step / 4, f"layer {step}", 30)
    store.complete(job.id, "w1", {})
    events = list(store.watch(job.id, poll_seconds=0.01))
    assert [e.seq for e in events] == list(range(1, 7))
    assert [e.state for e in events] == [JobState.QUEUED] + [JobState.RUNNING] * 4 + [JobState.SUCCEEDED]
    assert [e.progress for e in events[2:5]] == [0.25, 0.5, 0.75]
    assert [e.seq for e in store.events(job.id, after_seq=4)] == [5, 6]
    assert list(store.watch(job.id, after_seq=6)) == []


def test_progress_must_be_a_fraction(store):
    job = store.submit(KIND, {})
    lease(store)
    with pytest.raises(InvalidInput, match="0..1"):
        store.progress(job.id, "w1", 1.5, "", 30)


def test_list_filters_by_kind_and_state_newest_first(store):
    jobs = [store.submit(KIND, {"n": n}) for n in range(3)]
    store.submit("build", {})
    lease(store)
    assert [j.id for j in store.list_jobs(KIND)] == [j.id for j in reversed(jobs)]
    assert [j.id for j in store.list_jobs(KIND, JobState.RUNNING)] == [jobs[0].id]
    assert len(store.list_jobs()) == 4 and len(store.list_jobs(limit=2)) == 2


def test_store_config_validates_and_defaults():
    with pytest.raises(InvalidInput, match="in-memory"):
        StoreConfig("sqlite://")
    with pytest.raises(InvalidInput, match="not one of sqlite, postgresql"):
        StoreConfig("mysql://x/y")
    assert StoreConfig.from_env(environ={"DBRX_DATABASE_URL": "sqlite:////tmp/a.db"}).database_url == "sqlite:////tmp/a.db"
    assert StoreConfig.from_env("sqlite:////tmp/b.db", environ={"DBRX_DATABASE_URL": "x"}).database_url \
        == "sqlite:////tmp/b.db"
    assert default_database_url({"XDG_DATA_HOME": "/data"}) == "sqlite:////data/dbrx-serve/jobs.db"
