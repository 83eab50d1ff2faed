"""A generic worker: lease jobs of one kind, run a handler, record the outcome.

    def convert(job, ctx):
        for i, layer in enumerate(layers):
            ctx.checkpoint()                      # Cancelled if cancelled or the lease was lost
            ...
            ctx.progress((i + 1) / len(layers), f"layer {i}")
        return {"manifest": ...}                  # stored as the job's result

    Worker(store, CONVERT, convert).run_forever()

A heartbeat thread keeps the lease alive while the handler works. Outcomes:
a returned dict -> SUCCEEDED; `Cancelled` -> CANCELLED; bad input or any other
domain error (`DbrxServeError`: it will not get better) or a hopeless
file-system error (a name too long, a loop of links, a read-only file system,
no permission: HOPELESS_ERRNOS) -> FAILED at once with its message; any other
exception (an I/O error, a full disk, out of memory, `Unavailable`) -> this
attempt failed, retried until max_attempts, the message saying what it was.
A worker that lost its lease writes nothing more.

A job store that does not answer (`StoreUnavailable`) does not end the attempt:
progress is reported again until the store answers, for as long as the lease
holds (no other worker may take the job before it expires); an outcome is
recorded again until the store answers or the worker is stopped.
"""

import errno
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import Cancelled, DbrxServeError, InvalidInput, Unavailable, shown
from ..logs import job_context
from ..metrics import JobMetrics
from .jobs import Job
from .store import JobStore, LeaseLost, StoreUnavailable

log = logging.getLogger("dbrx_serve.jobstore.worker")

# OS errors about the path itself or its permissions, which another attempt would meet again.
HOPELESS_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.EROFS,
                             errno.EACCES, errno.EPERM})
STORE_RETRY_SECONDS = 1.0  # between calls to a job store that did not answer


def default_owner() -> str:
    """host:pid:random, unique per worker even when pids are reused."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class WorkerConfig:
    kind: str
    owner: str
    lease_seconds: float = 30.0
    poll_seconds: float = 1.0
    heartbeat_seconds: float | None = None  # default: a third of the lease
    job_id: str | None = None  # run only this job (an in-process `dbrx convert`/`dbrx build`)

    def __post_init__(self):
        if not self.kind or not self.owner:
            raise InvalidInput("a worker needs a job kind and an owner name")
        if self.lease_seconds <= 0 or self.poll_seconds <= 0:
            raise InvalidInput("lease_seconds and poll_seconds must be positive")
        if self.heartbeat_seconds is not None and not 0 < self.heartbeat_seconds < self.lease_seconds:
            raise InvalidInput(f"heartbeat_seconds must be within (0, lease_seconds={self.lease_seconds})")

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat_seconds or self.lease_seconds / 3


class Lease:
    """Keeps one job's lease alive from a background thread and remembers what the
    store said back: a cancel request, or that the lease is gone."""

    def __init__(self, store: JobStore, job: Job, config: WorkerConfig):
        self.store, self.job_id, self.config = store, job.id, config
        self.expires = time.monotonic() + config.lease_seconds  # when others may take the job, as seen here
        self.cancel_requested = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job.id[:8]}", daemon=True)

    def __enter__(self) -> "Lease":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def update(self, call: Callable[[], bool]) -> None:
        """Run a store call that extends the lease and returns the cancel flag; note a lost lease."""
        started = time.monotonic()
        try:
            cancel = call()
        except LeaseLost:
            self.lost.set()
            raise
        self.expires = max(self.expires, started + self.config.lease_seconds)
        if cancel:
            self.cancel_requested.set()

    def update_patiently(self, call: Callable[[], bool]) -> None:
        """`update`, made again while the store does not answer and the lease holds: until it
        expires no other worker can take the job, so the work goes on when the store is back.
        Past that the StoreUnavailable is raised (the attempt fails and is retried)."""
        while True:
            try:
                return self.update(call)
            except StoreUnavailable as error:
                left = self.expires - time.monotonic()
                if left <= 0:
                    raise
                log.warning("job %s: %s; trying again for up to %.0f s while the lease holds", self.job_id,
                            error, left)
                time.sleep(min(STORE_RETRY_SECONDS, left))

    def _beat(self) -> None:
        while not self._stop.wait(self.config.heartbeat_interval) and not self.lost.is_set():
            try:
                self.update(lambda: self.store.heartbeat(self.job_id, self.config.owner, self.config.lease_seconds))
            except LeaseLost:
                log.warning("job %s: lease lost by %s", self.job_id, self.config.owner)
            except StoreUnavailable as error:  # try again next beat; the lease has slack
                log.warning("job %s: heartbeat not recorded: %s", self.job_id, error)
            except Exception:
                log.exception("job %s: heartbeat failed", self.job_id)


class JobContext:
    """What a handler gets besides the job: progress reports and cancellation points."""

    def __init__(self, store: JobStore, job: Job, lease: Lease):
        self.store, self.job, self._lease = store, job, lease
        self.owner = lease.config.owner

    def checkpoint(self) -> None:
        """Raise `Cancelled` (or `LeaseLost`) if the job must stop here."""
        if self._lease.lost.is_set():
            raise LeaseLost(f"job {self.job.id}: this worker lost its lease")
        if self._lease.cancel_requested.is_set():
            raise Cancelled(f"job {self.job.id} was cancelled")

    def progress(self, fraction: float, message: str = "") -> None:
        """Record progress (0..1) as an event, extend the lease, then act as a checkpoint."""
        seconds = self._lease.config.lease_seconds
        self._lease.update_patiently(lambda: self.store.progress(self.job.id, self.owner, fraction, message, seconds))
        self.checkpoint()


Handler = Callable[[Job, JobContext], dict[str, Any] | None]


class Worker:
    def __init__(self, store: JobStore, kind: str, handler: Handler, owner: str | None = None,
                 lease_seconds: float = 30.0, poll_seconds: float = 1.0, heartbeat_seconds: float | None = None,
                 job_id: str | None = None, metrics: JobMetrics | None = None):
        self.store, self.handler, self.metrics = store, handler, metrics
        self.config = WorkerConfig(kind, owner or default_owner(), lease_seconds, poll_seconds, heartbeat_seconds,
                                   job_id)
        self._stop = threading.Event()

    def run_once(self) -> Job | None:
        """Lease one job and run it to its outcome; None when nothing was runnable."""
        job = self.store.lease(self.config.kind, self.config.owner, self.config.lease_seconds, self.config.job_id)
        if job is None:
            return None
        started = time.perf_counter()
        with job_context(job.id):
            log.info("job %s (%s): attempt %d of %d started", job.id, job.kind, job.attempts, job.max_attempts)
            with Lease(self.store, job, self.config) as lease:
                record = self._attempt(job, JobContext(self.store, job, lease))
            self._settle(job, record)  # after the heartbeat stopped: it would see the job end
            return self._ended(self.store.get(job.id), time.perf_counter() - started)

    def _ended(self, job: Job, seconds: float) -> Job:
        log.info("job %s (%s): attempt %d left it %s after %.1f s", job.id, job.kind, job.attempts,
                 job.state.value, seconds)
        if self.metrics is not None:
            self.metrics.observe(job.kind, job.state.value, seconds)
        return job

    def run_forever(self) -> None:
        """Run jobs until `stop()`; the job in hand is finished first. A store error
        (database restarting) is logged and retried after `poll_seconds`."""
        while not self._stop.is_set():
            try:
                ran = self.run_once()
            except StoreUnavailable as error:
                log.warning("worker %s: %s; trying again in %g s", self.config.owner, error, self.config.poll_seconds)
                ran = None
            except Exception:
                log.exception("worker %s: the job store failed; retrying", self.config.owner)
                ran = None
            if ran is None:
                self._stop.wait(self.config.poll_seconds)

    def stop(self) -> None:
        self._stop.set()

    def _attempt(self, job: Job, ctx: JobContext) -> Callable[[], Job] | None:
        """Run the handler; return how to record its outcome (None: the lease is gone)."""
        owner = self.config.owner
        try:
            result = self.handler(job, ctx)
        except LeaseLost as error:
            log.warning("job %s: stopped, %s", job.id, error)
            return None
        except Cancelled:
            return lambda: self.store.confirm_cancel(job.id, owner)
        except Exception as error:
            return self._failed(job, error)
        return lambda: self._complete(job, result)

    def _failed(self, job: Job, error: Exception) -> Callable[[], Job]:
        message, retry = failure(error)
        if retry:
            log.exception("job %s: attempt %d failed", job.id, job.attempts)
        return lambda: self.store.fail(job.id, self.config.owner, message, retry=retry)

    def _complete(self, job: Job, result: dict[str, Any] | None) -> Job:
        try:
            return self.store.complete(job.id, self.config.owner, result)
        except LeaseLost:
            raise
        except InvalidInput as error:  # e.g. a result that is not JSON
            return self.store.fail(job.id, self.config.owner, f"the handler's result was refused: {error}", retry=False)

    def _settle(self, job: Job, record: Callable[[], Job] | None) -> None:
        """Record the outcome; while the store does not answer, try again until it does or the
        worker is stopped (left RUNNING, the job would be made anew over a published output)."""
        while record is not None:
            try:
                record()
                return
            except LeaseLost as error:
                log.warning("job %s: outcome dropped, %s", job.id, error)
                return
            except StoreUnavailable as error:
                if self._stop.is_set():
                    raise
                log.warning("job %s: outcome not recorded yet: %s", job.id, error)
                self._stop.wait(STORE_RETRY_SECONDS)


def failure(error: Exception) -> tuple[str, bool]:
    """A failed attempt's message, and whether another attempt may fare better: bad input or
    another domain error, or a hopeless OS error, will not; a store or service that did not
    answer, an I/O error, a full disk, no memory may."""
    if isinstance(error, DbrxServeError) and not isinstance(error, Unavailable):
        return str(error), False
    if isinstance(error, OSError) and error.errno in HOPELESS_ERRNOS:
        where = f": {shown(error.filename)}" if error.filename else ""
        return f"{error.strerror}{where} (not retried: another attempt would fail the same way)", False
    return described(error), True


def described(error: BaseException) -> str:
    """`Type: message (notes)`: what happened, and where when the raiser noted it
    (shared/hf_checkpoint.py notes the file it was reading)."""
    text = str(error) or (type(error).__doc__ or "").strip().split("\n")[0]  # MemoryError() has no message
    notes = "; ".join(getattr(error, "__notes__", ()))
    return f"{type(error).__name__}: {text}" + (f" ({notes})" if notes else "")
