"""JobService: read, cancel and watch jobs over gRPC. Thin: validate, one store
call (in a thread: the store blocks), convert. Errors are the store's typed
errors, mapped to status codes by `shared.rpc`."""

import asyncio

from dbrx_serve.shared import rpc
from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.generated.dbrx.serve.v1 import jobs_pb2 as pb, jobs_pb2_grpc as pb_grpc

from .convert import event_to_pb, job_to_pb, kind_from_pb, state_from_pb
from .store import JobStore

SERVICE_NAME = "dbrx.serve.v1.JobService"
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000


class JobServicer(pb_grpc.JobServiceServicer):
    def __init__(self, store: JobStore, watch_poll_seconds: float = 0.25):
        self.store, self.watch_poll_seconds = store, watch_poll_seconds

    async def GetJob(self, request: pb.GetJobRequest, context) -> pb.Job:
        return job_to_pb(await asyncio.to_thread(self.store.get, request.id))

    async def ListJobs(self, request: pb.ListJobsRequest, context) -> pb.ListJobsResponse:
        if not 0 <= request.limit <= MAX_LIST_LIMIT:
            raise InvalidInput(f"limit must be 0 (the default, {DEFAULT_LIST_LIMIT}) up to {MAX_LIST_LIMIT}, "
                               f"got {request.limit}")
        jobs = await asyncio.to_thread(self.store.list_jobs, kind_from_pb(request.kind),
                                       state_from_pb(request.state), request.limit or DEFAULT_LIST_LIMIT)
        return pb.ListJobsResponse(jobs=[job_to_pb(job) for job in jobs])

    async def CancelJob(self, request: pb.CancelJobRequest, context) -> pb.Job:
        return job_to_pb(await asyncio.to_thread(self.store.cancel, request.id))

    async def WatchJob(self, request: pb.WatchJobRequest, context):
        """Every event after `after_seq`, polled from the store, until the job ends."""
        after_seq = request.after_seq
        while True:
            events, done = await asyncio.to_thread(self.store.poll, request.id, after_seq)
            for event in events:
                yield event_to_pb(event)
            after_seq = events[-1].seq if events else after_seq
            if done:
                return
            await asyncio.sleep(self.watch_poll_seconds)


def job_servicer(store: JobStore, watch_poll_seconds: float = 0.25) -> rpc.Servicer:
    """For `rpc.build_server([...])` next to a stage's own servicer."""
    return rpc.Servicer(pb_grpc.add_JobServiceServicer_to_server, JobServicer(store, watch_poll_seconds),
                        SERVICE_NAME)
