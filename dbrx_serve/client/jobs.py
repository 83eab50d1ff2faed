"""Job helpers: a submitted job's handle (`wait`, `watch`, `cancel`, `refresh`), sync and
asyncio, and the resumable watch under both: WatchJob again after the last event seen
whenever the stream breaks on UNAVAILABLE (a dropped connection, a server restarting), so no
event is missed and none is seen twice."""

import asyncio
import time
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable, Iterator

import grpc

from dbrx_serve.shared.errors import DbrxServeError
from dbrx_serve.shared.generated.dbrx.serve.v1 import jobs_pb2
from dbrx_serve.shared.status import typed_error

from .messages import state_name
from .retry import RetryPolicy, retryable

if TYPE_CHECKING:
    from .aio import AsyncClient
    from .sync import Client

Progress = Callable[[jobs_pb2.JobEvent], object]  # called with each event, e.g. to move a progress bar


class JobFailed(DbrxServeError):
    """`wait()` on a job that ended FAILED or CANCELLED; `job` is how it ended."""

    def __init__(self, job: jobs_pb2.Job):
        super().__init__(f"job {job.id} {state_name(job)}: {job.message}")
        self.job = job


class Resume:
    """A watch's place: the last event's seq, and how many breaks in a row (reset by an event)."""

    def __init__(self, after_seq: int, policy: RetryPolicy):
        self.after_seq, self.policy, self.failures = after_seq, policy, 0

    def seen(self, event: jobs_pb2.JobEvent) -> jobs_pb2.JobEvent:
        self.after_seq, self.failures = event.seq, 0
        return event

    def backoff(self, error: grpc.RpcError) -> float:
        """Seconds to wait before watching again; the typed error when it is not worth it."""
        self.failures += 1
        if not (retryable(error) and self.failures < self.policy.max_attempts):
            raise typed_error(error) from None
        return self.policy.backoff(self.failures)


def watch(open_stream: Callable[[int], Iterator[jobs_pb2.JobEvent]], after_seq: int,
          policy: RetryPolicy) -> Iterator[jobs_pb2.JobEvent]:
    """Every event after `after_seq` until the job ends; `open_stream(after_seq)` calls WatchJob."""
    place = Resume(after_seq, policy)
    while True:
        try:
            yield from (place.seen(event) for event in open_stream(place.after_seq))
            return
        except grpc.RpcError as error:
            wait = place.backoff(error)
        time.sleep(wait)


async def watch_async(open_stream: Callable[[int], AsyncIterator[jobs_pb2.JobEvent]], after_seq: int,
                      policy: RetryPolicy) -> AsyncIterator[jobs_pb2.JobEvent]:
    """`watch` for asyncio."""
    place = Resume(after_seq, policy)
    while True:
        try:
            async for event in open_stream(place.after_seq):
                yield place.seen(event)
            return
        except grpc.RpcError as error:
            wait = place.backoff(error)
        await asyncio.sleep(wait)


def ended(job: jobs_pb2.Job, check: bool) -> jobs_pb2.Job:
    if check and job.state != jobs_pb2.JOB_STATE_SUCCEEDED:
        raise JobFailed(job)
    return job


class JobHandle:
    """A submitted job. `job` is the last state read (the submit's answer, then `refresh`'s)."""

    def __init__(self, client: "Client", job: jobs_pb2.Job):
        self.client, self.job = client, job

    @property
    def id(self) -> str:
        return self.job.id

    def refresh(self) -> jobs_pb2.Job:
        self.job = self.client.get_job(self.id)
        return self.job

    def watch(self, after_seq: int = 0) -> Iterator[jobs_pb2.JobEvent]:
        return self.client.watch_job(self.id, after_seq)

    def wait(self, progress: Progress | None = None, check: bool = True) -> jobs_pb2.Job:
        """Follow the job's events (each to `progress`) until it ends; the final job. With
        `check`, JobFailed unless it SUCCEEDED."""
        for event in self.watch():
            if progress is not None:
                progress(event)
        return ended(self.refresh(), check)

    def cancel(self) -> jobs_pb2.Job:
        self.job = self.client.cancel_job(self.id)
        return self.job


class AsyncJobHandle:
    """`JobHandle` for asyncio."""

    def __init__(self, client: "AsyncClient", job: jobs_pb2.Job):
        self.client, self.job = client, job

    @property
    def id(self) -> str:
        return self.job.id

    async def refresh(self) -> jobs_pb2.Job:
        self.job = await self.client.get_job(self.id)
        return self.job

    def watch(self, after_seq: int = 0) -> AsyncIterator[jobs_pb2.JobEvent]:
        return self.client.watch_job(self.id, after_seq)

    async def wait(self, progress: Callable[[jobs_pb2.JobEvent], object | Awaitable[object]] | None = None,
                   check: bool = True) -> jobs_pb2.Job:
        """Follow the job until it ends; `progress` may be a coroutine function."""
        async for event in self.watch():
            if progress is not None and asyncio.iscoroutine(shown := progress(event)):
                await shown
        return ended(await self.refresh(), check)

    async def cancel(self) -> jobs_pb2.Job:
        self.job = await self.client.cancel_job(self.id)
        return self.job
