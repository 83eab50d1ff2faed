"""The job store: submit, lease, heartbeat, progress, finish, cancel, watch.

Every write is one short transaction that locks the job's row first
(`SELECT ... FOR UPDATE` on PostgreSQL; on SQLite the whole database, by
`BEGIN IMMEDIATE`), so state changes and their JobEvent rows commit
together. Leasing first queues again every RUNNING job whose lease expired
(its worker died), then takes the oldest QUEUED job, with `FOR UPDATE SKIP
LOCKED`, so concurrent workers never lease the same job. Lease times come
from each host's clock: keep hosts in NTP sync, well within `lease_seconds`.

Worker-side calls (heartbeat, progress, complete, fail, confirm_cancel) name
the lease owner and raise `LeaseLost` when the job is no longer theirs.

A database that does not answer (PostgreSQL down or restarting, SQLite locked
by another process past the busy timeout) raises `StoreUnavailable` saying
which and what to check; the call may be made again (the worker does:
worker.py). Pooled connections a restart broke are replaced when next used.

A JobStore is safe to share between threads; open one per process (its
connection pool does not survive a fork).
"""

import json
import time
import uuid
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import BadState, Cancelled, InvalidInput, NotFound, Unavailable, shown
from .config import StoreConfig
from .engine import make_engine, reader
from .jobs import Job, JobEvent, JobState
from .migrate import upgrade
from .models import JobEventRow, JobRow

DEFAULT_MAX_ATTEMPTS = 3
MAX_KEY_LENGTH = 255  # characters of an idempotency key (its column's size)
QUEUED, RUNNING = JobState.QUEUED.value, JobState.RUNNING.value


class LeaseLost(Cancelled):
    """This worker no longer holds the job (its lease expired and another worker
    took it, or the job ended): stop and write nothing more."""


class StoreUnavailable(Unavailable):
    """The database did not answer: down, restarting, unreachable, or (SQLite) locked by
    another process for longer than the busy timeout. Try the call again later."""


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def parse_job_id(job_id: str) -> str:
    try:
        return str(uuid.UUID(job_id))
    except (ValueError, TypeError, AttributeError):
        raise InvalidInput(f"job id {shown(job_id)} is not a UUID like {uuid.uuid4()}") from None


class JobStore:
    def __init__(self, config: StoreConfig):
        self.config = config
        self.engine = make_engine(config)
        try:
            with self._answered():  # no server there, a wrong password, no such database ...
                upgrade(self.engine)
        except StoreUnavailable:
            self.engine.dispose()
            raise
        self._writer = sessionmaker(self.engine, expire_on_commit=False).begin
        self._reader = sessionmaker(reader(self.engine), expire_on_commit=False).begin

    @classmethod
    def open(cls, database_url: str | None = None) -> "JobStore":
        """The store at `database_url`, else DBRX_DATABASE_URL, else the embedded SQLite file."""
        return cls(StoreConfig.from_env(database_url))

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "JobStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- submitting and reading -------------------------------------------------

    def submit(self, kind: str, spec: dict[str, Any], *, output_dir: str = "",
               idempotency_key: str | None = None, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Job:
        """A new QUEUED job; with an idempotency key already used for this kind, that job instead."""
        _check_submit(kind, spec, idempotency_key, max_attempts)
        try:
            with self._write() as s:
                return self._find_by_key(s, kind, idempotency_key, spec) or self._insert(
                    s, kind, spec, self._free_output(s, output_dir), idempotency_key or None, max_attempts)
        except IntegrityError:  # a concurrent submit with the same key committed first
            with self._read() as s:
                return self._find_by_key(s, kind, idempotency_key, spec)

    def get(self, job_id: str) -> Job:
        with self._read() as s:
            return _job(self._row(s, job_id))

    def list_jobs(self, kind: str | None = None, state: JobState | None = None, limit: int = 100) -> list[Job]:
        """Newest first."""
        query = select(JobRow).order_by(JobRow.created_at.desc(), JobRow.id).limit(max(1, limit))
        if kind:
            query = query.where(JobRow.kind == kind)
        if state:
            query = query.where(JobRow.state == JobState(state).value)
        with self._read() as s:
            return [_job(row) for row in s.scalars(query)]

    def count_by_state(self, kind: str) -> dict[str, int]:
        """How many jobs of `kind` are in each state (states with none left out)."""
        query = select(JobRow.state, func.count()).where(JobRow.kind == kind).group_by(JobRow.state)
        with self._read() as s:
            return {state: count for state, count in s.execute(query)}

    def events(self, job_id: str, after_seq: int = 0, limit: int = 500) -> list[JobEvent]:
        with self._read() as s:
            return self._events(s, parse_job_id(job_id), after_seq, limit)

    def poll(self, job_id: str, after_seq: int = 0, limit: int = 500) -> tuple[list[JobEvent], bool]:
        """The events after `after_seq`, and whether they are the last (the job has ended)."""
        with self._read() as s:
            state = JobState(self._row(s, job_id).state)  # read before the events: a final event
            events = self._events(s, parse_job_id(job_id), after_seq, limit)  # commits with its state
        return events, state.is_terminal and len(events) < limit

    def watch(self, job_id: str, after_seq: int = 0, poll_seconds: float = 0.5) -> Iterator[JobEvent]:
        """Events as they come, until the job ends (works from any host that sees the database)."""
        while True:
            events, done = self.poll(job_id, after_seq)
            yield from events
            after_seq = events[-1].seq if events else after_seq
            if done:
                return
            time.sleep(poll_seconds)

    # -- cancelling ----------------------------------------------------------------

    def cancel(self, job_id: str) -> Job:
        """QUEUED: CANCELLED now. RUNNING: cancel requested; the worker stops at its next
        checkpoint. An ended job is returned unchanged."""
        with self._write() as s:
            row = self._row(s, job_id, lock=True)
            now = now_utc()
            if row.state == QUEUED:
                self._end(s, row, JobState.CANCELLED, "cancelled before it started", now)
            elif row.state == RUNNING and not row.cancel_requested:
                row.cancel_requested = True
                row.message = "cancel requested; the job stops at its next checkpoint"
                self._record(s, row, now)
            return _job(row)

    # -- the worker's side ---------------------------------------------------------

    def lease(self, kind: str, owner: str, lease_seconds: float, job_id: str | None = None) -> Job | None:
        """Start the oldest queued job of `kind` (or that one job) for `owner`, or None when
        there is none. Expired leases are dealt with first (`expire_leases`)."""
        _check_positive("lease_seconds", lease_seconds)
        with self._write() as s:
            now = now_utc()
            self._expire(s, kind, now)
            row = self._next_queued(s, kind, job_id)
            if row is None:
                return None
            self._start(s, row, owner, now, lease_seconds)
            return _job(row)

    def expire_leases(self, kind: str) -> list[Job]:
        """Jobs of `kind` whose worker stopped heartbeating (killed, its host gone) and whose
        lease expired: queued again for another attempt, or ended when a cancel was requested or
        no attempt is left. Workers do this as they lease; job servers also do it on their own
        (shared/job_stage.py), so that no job stays RUNNING with no worker left. Returns them."""
        with self._write() as s:
            return [_job(row) for row in self._expire(s, kind, now_utc())]

    def heartbeat(self, job_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend the lease; True when a cancel was requested. LeaseLost when no longer ours."""
        with self._write() as s:
            row = self._owned(s, job_id, owner)
            _extend(row, now_utc(), lease_seconds)
            return row.cancel_requested

    def progress(self, job_id: str, owner: str, fraction: float, message: str, lease_seconds: float) -> bool:
        """Record progress (an event) and extend the lease; True when a cancel was requested."""
        if not 0.0 <= fraction <= 1.0:
            raise InvalidInput(f"progress must be within 0..1, got {fraction}")
        with self._write() as s:
            row = self._owned(s, job_id, owner)
            now = now_utc()
            _extend(row, now, lease_seconds)
            row.progress, row.message = float(fraction), message
            self._record(s, row, now)
            return row.cancel_requested

    def complete(self, job_id: str, owner: str, result: dict[str, Any] | None = None) -> Job:
        _check_json("result", result)
        with self._write() as s:
            row = self._owned(s, job_id, owner)
            row.result, row.progress = result, 1.0
            self._end(s, row, JobState.SUCCEEDED, "succeeded", now_utc())
            return _job(row)

    def fail(self, job_id: str, owner: str, error: str, retry: bool) -> Job:
        """End this attempt with `error`: back to the queue when `retry` and attempts remain,
        else FAILED."""
        with self._write() as s:
            row = self._owned(s, job_id, owner)
            row.last_error = error
            now = now_utc()
            if row.cancel_requested:  # a cancel outranks a retry: the user asked it to stop
                self._end(s, row, JobState.CANCELLED, f"cancelled; the attempt ended with: {error}", now)
            elif not retry:
                self._end(s, row, JobState.FAILED, error, now)
            elif row.attempts < row.max_attempts:
                self._requeue(s, row, now)
            else:
                self._end(s, row, JobState.FAILED, _gave_up(row), now)
            return _job(row)

    def confirm_cancel(self, job_id: str, owner: str) -> Job:
        """The worker stopped at a checkpoint after a cancel request."""
        with self._write() as s:
            row = self._owned(s, job_id, owner)
            self._end(s, row, JobState.CANCELLED, "cancelled at a checkpoint", now_utc())
            return _job(row)

    # -- sessions and rows --------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A write transaction (it takes SQLite's writer lock up front: engine.py)."""
        with self._answered(), self._writer() as s:
            yield s

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._answered(), self._reader() as s:
            yield s

    @contextmanager
    def _answered(self) -> Iterator[None]:
        """A database that did not answer raised as StoreUnavailable, saying what to check."""
        try:
            yield
        except DBAPIError as error:
            if not isinstance(error, (OperationalError, InterfaceError)) and not error.connection_invalidated:
                raise
            raise StoreUnavailable(unanswered(self.config, error)) from error

    def _row(self, s: Session, job_id: str, lock: bool = False) -> JobRow:
        row = s.get(JobRow, parse_job_id(job_id), with_for_update=lock)
        if row is None:
            raise NotFound(f"no job with id {job_id}")
        return row

    def _owned(self, s: Session, job_id: str, owner: str) -> JobRow:
        row = self._row(s, job_id, lock=True)
        if row.state != RUNNING or row.lease_owner != owner:
            raise LeaseLost(f"job {row.id} is no longer leased by {owner} "
                            f"(state {row.state}, lease owner {row.lease_owner})")
        return row

    def _find_by_key(self, s: Session, kind: str, key: str | None, spec: dict | None = None) -> Job | None:
        """The job submitted with this key; a different spec under the same key is refused."""
        if not key:
            return None
        row = s.scalars(select(JobRow).where(JobRow.kind == kind, JobRow.idempotency_key == key)).first()
        if row is not None and spec is not None and row.spec != json.loads(json.dumps(spec)):
            raise BadState(f"idempotency key {shown(key)} was used for job {row.id} with other options: "
                           "use a new key for a different request")
        return _job(row) if row else None

    def _free_output(self, s: Session, output_dir: str) -> str:
        """Refuse a second live job writing the same output: a retry of one would clear the other's work."""
        if output_dir:
            busy = s.scalars(select(JobRow).where(JobRow.output_dir == output_dir,
                                                  JobRow.state.in_([QUEUED, RUNNING]))).first()
            if busy is not None:
                raise BadState(f"job {busy.id} ({busy.state.lower()}) already writes {output_dir}: "
                               "wait for it or cancel it, or choose another output directory")
        return output_dir

    def _insert(self, s, kind, spec, output_dir, key, max_attempts) -> Job:
        now = now_utc()
        row = JobRow(id=str(uuid.uuid4()), kind=kind, spec=spec, state=QUEUED, attempts=0,
                     max_attempts=max_attempts, progress=0.0, message="queued", last_error="",
                     result=None, output_dir=output_dir, idempotency_key=key, cancel_requested=False,
                     last_seq=0, created_at=now, updated_at=now)
        s.add(row)
        s.flush()  # the job row before its first event (foreign key)
        self._record(s, row, now)
        return _job(row)

    def _events(self, s: Session, job_id: str, after_seq: int, limit: int) -> list[JobEvent]:
        query = (select(JobEventRow).where(JobEventRow.job_id == job_id, JobEventRow.seq > after_seq)
                 .order_by(JobEventRow.seq).limit(limit))
        return [_event(row) for row in s.scalars(query)]

    def _next_queued(self, s: Session, kind: str, job_id: str | None) -> JobRow | None:
        query = select(JobRow).where(JobRow.kind == kind, JobRow.state == QUEUED)
        if job_id is not None:
            query = query.where(JobRow.id == parse_job_id(job_id))
        query = query.order_by(JobRow.created_at, JobRow.id).limit(1).with_for_update(skip_locked=True)
        return s.scalars(query).first()

    def _expire(self, s: Session, kind: str, now: datetime) -> list[JobRow]:
        query = (select(JobRow).where(JobRow.kind == kind, JobRow.state == RUNNING, JobRow.lease_expires_at < now)
                 .with_for_update(skip_locked=True))
        rows = list(s.scalars(query))
        for row in rows:
            row.last_error = (f"worker {row.lease_owner} stopped heartbeating; its lease expired at "
                              f"{row.lease_expires_at:%Y-%m-%d %H:%M:%S} UTC")
            if row.cancel_requested:
                self._end(s, row, JobState.CANCELLED, "cancelled (its worker stopped before a checkpoint)", now)
            elif row.attempts >= row.max_attempts:
                self._end(s, row, JobState.FAILED, _gave_up(row), now)
            else:
                self._requeue(s, row, now)
        s.flush()
        return rows

    def _start(self, s: Session, row: JobRow, owner: str, now: datetime, lease_seconds: float) -> None:
        row.state, row.lease_owner, row.started_at = RUNNING, owner, now
        row.attempts += 1
        row.progress = 0.0
        row.message = f"attempt {row.attempts} of {row.max_attempts} started by {owner}"
        _extend(row, now, lease_seconds)
        self._record(s, row, now)

    def _requeue(self, s: Session, row: JobRow, now: datetime) -> None:
        row.state, row.lease_owner, row.lease_expires_at = QUEUED, None, None
        row.message = f"attempt {row.attempts} of {row.max_attempts} failed, will retry: {row.last_error}"
        self._record(s, row, now)

    def _end(self, s: Session, row: JobRow, state: JobState, message: str, now: datetime) -> None:
        row.state, row.message, row.finished_at, row.lease_expires_at = state.value, message, now, None
        self._record(s, row, now)

    def _record(self, s: Session, row: JobRow, now: datetime) -> None:
        """Every state change and progress note is an event, committed with it."""
        row.updated_at = now
        row.last_seq += 1
        s.add(JobEventRow(job_id=row.id, seq=row.last_seq, state=row.state, progress=row.progress,
                          message=row.message, time=now))


def unanswered(config: StoreConfig, error: DBAPIError) -> str:
    """What a person reads when the database did not answer: which store, why, what to check."""
    url = make_url(config.database_url).render_as_string(hide_password=True)
    reason = (str(error.orig).strip().splitlines() or ["no reason given"])[0]
    if config.backend == "sqlite" and "locked" in reason:
        return (f"the job store {url} stayed locked by another process for more than its busy timeout of "
                f"{config.busy_timeout_seconds:g} s ({reason}): look for what holds it (a long transaction, a "
                "backup, a sqlite3 shell); with many workers, use PostgreSQL")
    return f"the job store {url} did not answer ({reason}): check that the database is up and reachable"


def _extend(row: JobRow, now: datetime, lease_seconds: float) -> None:
    _check_positive("lease_seconds", lease_seconds)
    row.heartbeat_at, row.lease_expires_at = now, now + timedelta(seconds=lease_seconds)


def _gave_up(row: JobRow) -> str:
    attempts = "1 attempt" if row.attempts == 1 else f"{row.attempts} attempts"
    return f"failed after {attempts}; last error: {row.last_error}"


def _job(row: JobRow) -> Job:
    values = {f.name: getattr(row, f.name) for f in fields(Job)}
    return Job(**{**values, "state": JobState(row.state)})


def _event(row: JobEventRow) -> JobEvent:
    return JobEvent(job_id=row.job_id, seq=row.seq, state=JobState(row.state), progress=row.progress,
                    message=row.message, time=row.time)


def _check_submit(kind: str, spec: dict[str, Any], key: str | None, max_attempts: int) -> None:
    if key is not None and len(key) > MAX_KEY_LENGTH:
        raise InvalidInput(f"an idempotency key of {len(key)} characters is over the {MAX_KEY_LENGTH} allowed")
    if not kind or not isinstance(kind, str):
        raise InvalidInput(f"job kind must be a non-empty string, got {shown(kind)}")
    if not isinstance(spec, dict):
        raise InvalidInput(f"job spec must be a dict, got {type(spec).__name__}")
    _check_json("spec", spec)
    if not isinstance(max_attempts, int) or max_attempts < 1:
        raise InvalidInput(f"max_attempts must be an integer >= 1, got {max_attempts!r}")


def _check_json(name: str, value: Any) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"job {name} must be JSON-serializable: {error}") from None


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise InvalidInput(f"{name} must be positive, got {value}")
