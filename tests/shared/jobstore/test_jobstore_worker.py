"""The generic worker on a real store: outcomes, retries, heartbeats, cancel, a lost lease."""

import errno
import sqlite3
import threading
import time

from sqlalchemy import update

from dbrx_serve.shared.artifacts import artifact_dir
from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.jobstore import JobState, JobStore, LeaseLost, StoreConfig, Worker
from dbrx_serve.shared.jobstore.models import JobRow

KIND = "convert"
WAIT = 30  # seconds a test waits for another thread before giving up


def worker(store, handler, **options):
    options = {"owner": "w1", "lease_seconds": 2.0, "poll_seconds": 0.05, **options}
    return Worker(store, KIND, handler, **options)


def in_thread(target):
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_a_handler_result_and_progress_are_recorded(store):
    job = store.submit(KIND, {"layers": 3})

    def handle(job, ctx):
        for layer in range(job.spec["layers"]):
            ctx.progress((layer + 1) / 3, f"layer {layer}")
        return {"layers_done": 3}

    done = worker(store, handle).run_once()
    assert (done.id, done.state, done.attempts, done.result) == (job.id, JobState.SUCCEEDED, 1, {"layers_done": 3})
    progress = [(e.progress, e.message) for e in store.events(job.id) if e.message.startswith("layer")]
    assert progress == [(1 / 3, "layer 0"), (2 / 3, "layer 1"), (1.0, "layer 2")]
    assert worker(store, handle).run_once() is None


def test_a_domain_error_fails_the_job_at_once(store):
    job = store.submit(KIND, {}, max_attempts=3)

    def handle(job, ctx):
        raise InvalidInput("tp_size 3 does not divide n_heads 8: pick 1, 2, 4 or 8")

    failed = worker(store, handle).run_once()
    assert (failed.id, failed.state, failed.attempts) == (job.id, JobState.FAILED, 1)
    assert failed.message == "tp_size 3 does not divide n_heads 8: pick 1, 2, 4 or 8"


def test_other_errors_are_retried_until_max_attempts(store):
    job = store.submit(KIND, {}, max_attempts=3)
    calls = []

    def handle(job, ctx):
        calls.append(job.attempts)
        raise OSError(f"read error on attempt {job.attempts}")

    w = worker(store, handle)
    outcomes = [w.run_once() for _ in range(3)]
    assert [o.state for o in outcomes] == [JobState.QUEUED, JobState.QUEUED, JobState.FAILED]
    assert calls == [1, 2, 3]
    assert outcomes[-1].message == "failed after 3 attempts; last error: OSError: read error on attempt 3"
    assert w.run_once() is None and store.get(job.id).attempts == 3


def test_a_flaky_job_succeeds_on_a_later_attempt(store):
    store.submit(KIND, {})

    def handle(job, ctx):
        if job.attempts == 1:
            raise ConnectionError("lost the file server")
        return {"ok": True}

    w = worker(store, handle)
    assert w.run_once().state == JobState.QUEUED
    done = w.run_once()
    assert (done.state, done.attempts, done.result) == (JobState.SUCCEEDED, 2, {"ok": True})


def test_a_result_that_is_not_json_fails_the_job(store):
    store.submit(KIND, {})
    failed = worker(store, lambda job, ctx: {"path": object()}).run_once()
    assert failed.state == JobState.FAILED and "result was refused" in failed.message


def test_the_heartbeat_keeps_a_long_step_leased(store):
    job = store.submit(KIND, {})
    step_started, step_done = threading.Event(), threading.Event()

    def handle(job, ctx):
        step_started.set()
        step_done.wait(WAIT)  # a long step with no progress calls
        return {}

    w = worker(store, handle, lease_seconds=0.6)
    outcome = []
    thread = in_thread(lambda: outcome.append(w.run_once()))
    assert step_started.wait(WAIT)
    deadline = time.monotonic() + 1.5  # well past the 0.6 s lease
    while time.monotonic() < deadline:
        assert store.lease(KIND, "thief", 0.6) is None
        time.sleep(0.1)
    step_done.set()
    thread.join(WAIT)
    assert (outcome[0].id, outcome[0].state, outcome[0].attempts) == (job.id, JobState.SUCCEEDED, 1)


def test_cancel_stops_a_running_job_at_its_next_checkpoint(store):
    job = store.submit(KIND, {})
    started, checkpoints = threading.Event(), []

    def handle(job, ctx):
        started.set()
        for _ in range(int(WAIT / 0.02)):
            ctx.checkpoint()
            checkpoints.append(1)
            time.sleep(0.02)
        return {"finished": True}

    w = worker(store, handle, lease_seconds=1.0, heartbeat_seconds=0.1)
    outcome = []
    thread = in_thread(lambda: outcome.append(w.run_once()))
    assert started.wait(WAIT)
    assert store.cancel(job.id).state == JobState.RUNNING
    thread.join(WAIT)
    assert (outcome[0].state, outcome[0].message, outcome[0].result) == (JobState.CANCELLED, "cancelled at a checkpoint",
                                                                         None)
    assert checkpoints  # it was running when cancelled


def test_a_cancelled_queued_job_never_runs(store):
    job = store.submit(KIND, {})
    store.cancel(job.id)
    ran = []
    assert worker(store, lambda job, ctx: ran.append(job)).run_once() is None
    assert ran == [] and store.get(job.id).state == JobState.CANCELLED


def test_progress_is_a_checkpoint(store):
    job = store.submit(KIND, {})

    def handle(job, ctx):
        store.cancel(job.id)
        ctx.progress(0.5, "after the cancel")
        return {"finished": True}

    assert worker(store, handle).run_once().state == JobState.CANCELLED
    assert store.get(job.id).progress == 0.5


def test_a_worker_that_lost_its_lease_stops_and_writes_nothing(store):
    job = store.submit(KIND, {})
    started, stopped = threading.Event(), []

    def handle(job, ctx):
        started.set()
        try:
            for _ in range(int(WAIT / 0.02)):
                ctx.checkpoint()
                time.sleep(0.02)
        except Exception as error:
            stopped.append(error)
            raise
        return {"finished": True}

    w = worker(store, handle, lease_seconds=1.0, heartbeat_seconds=0.1)
    outcome = []
    thread = in_thread(lambda: outcome.append(w.run_once()))
    assert started.wait(WAIT)
    with store.engine.begin() as connection:  # as if w1 had stalled and another worker had taken over
        connection.execute(update(JobRow).where(JobRow.id == job.id).values(lease_owner="w2"))
    thread.join(WAIT)
    assert isinstance(stopped[0], LeaseLost)
    after = outcome[0]
    assert (after.state, after.lease_owner, after.result) == (JobState.RUNNING, "w2", None)


def test_a_worker_that_lost_its_lease_does_not_publish_its_output(store, tmp_path):
    """The lease is taken over after the handler's last checkpoint: the synchronous
    report before the rename notices, and the output directory never appears."""
    store.submit(KIND, {})
    out = tmp_path / "artifacts" / "out"

    def handle(job, ctx):
        with artifact_dir(out, "test", before_publish=lambda: ctx.progress(1.0, "publishing")) as temp:
            (temp / "weights.bin").write_bytes(b"w1's weights")
            with store.engine.begin() as connection:  # w1 stalls here; w2 takes the job over
                connection.execute(update(JobRow).where(JobRow.id == job.id).values(lease_owner="w2"))
        return {"finished": True}

    after = worker(store, handle, lease_seconds=30.0).run_once()
    assert (after.state, after.lease_owner, after.result) == (JobState.RUNNING, "w2", None)
    assert list(out.parent.iterdir()) == []


def test_run_forever_runs_jobs_until_stopped(store):
    jobs = [store.submit(KIND, {"n": n}) for n in range(3)]
    w = worker(store, lambda job, ctx: {"n": job.spec["n"]})
    thread = in_thread(w.run_forever)
    while any(not store.get(j.id).state.is_terminal for j in jobs):
        time.sleep(0.02)
    w.stop()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert [store.get(j.id).result for j in jobs] == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_a_worker_for_one_job_leaves_the_others_queued(store):
    """An in-process `dbrx convert` runs its own job only, not what else waits in the store."""
    older, mine = store.submit(KIND, {"n": 1}), store.submit(KIND, {"n": 2})
    only_mine = worker(store, lambda job, ctx: {"n": job.spec["n"]}, job_id=mine.id)
    assert only_mine.run_once().result == {"n": 2}
    assert only_mine.run_once() is None
    assert store.get(older.id).state is JobState.QUEUED


def test_a_cancel_outranks_the_retry_of_a_failing_attempt(store):
    """Cancelled while running, then the attempt dies of an ordinary error: CANCELLED, not requeued."""
    store.submit(KIND, {}, max_attempts=3)

    def handle(job, ctx):
        store.cancel(job.id)
        raise RuntimeError("disk full")

    ended = worker(store, handle).run_once()
    assert (ended.state, ended.attempts) == (JobState.CANCELLED, 1)
    assert "disk full" in ended.message


def test_a_hopeless_os_error_fails_the_job_at_once_and_a_transient_one_is_retried(store, tmp_path):
    """A name over 255 bytes will not get shorter: retrying it only wastes the attempts."""
    job = store.submit(KIND, {}, max_attempts=3)
    name = "n" * 300
    failed = worker(store, lambda job, ctx: (tmp_path / name).mkdir()).run_once()
    assert (failed.id, failed.state, failed.attempts) == (job.id, JobState.FAILED, 1)
    assert failed.message.startswith(f"File name too long: '{tmp_path / name[:100]}")
    assert "not retried" in failed.message

    def io_error(job, ctx):
        raise OSError(errno.EIO, "Input/output error", str(tmp_path))
    job = store.submit(KIND, {}, max_attempts=3)
    retried = worker(store, io_error).run_once()
    assert (retried.id, retried.state, retried.attempts) == (job.id, JobState.QUEUED, 1)


def test_an_outcome_is_recorded_once_the_store_answers_again(tmp_path):
    """The job ends while another process holds the SQLite file past the busy timeout: the
    worker records the outcome again until the lock is gone, rather than leave the job RUNNING
    for another worker to make anew (its output would already be published)."""
    path = tmp_path / "jobs.db"
    with JobStore(StoreConfig(f"sqlite:///{path}", busy_timeout_seconds=0.1)) as store:
        job = store.submit(KIND, {})

        def handle(job, ctx):
            holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            holder.execute("BEGIN IMMEDIATE")
            threading.Timer(1.0, lambda: (holder.execute("ROLLBACK"), holder.close())).start()
            return {"published": True}

        done = worker(store, handle).run_once()
    assert (done.id, done.state, done.attempts, done.result) == (job.id, JobState.SUCCEEDED, 1, {"published": True})
