"""BuilderService: submit a build as a job in the store; `dbrx worker builder`
runs it. Thin: validate and convert the request, one store call, convert the
job back; both in a thread (checking paths resolves them on the file system,
the store blocks), so that no request holds the event loop."""

import asyncio

from dbrx_serve.shared import rpc
from dbrx_serve.shared.generated.dbrx.serve.v1 import builder_pb2 as pb, builder_pb2_grpc as pb_grpc, jobs_pb2
from dbrx_serve.shared.jobstore import BUILD, JobStore
from dbrx_serve.shared.jobstore.convert import job_to_pb
from dbrx_serve.shared.options import ANY_ABSOLUTE_PATH, PathPolicy

from .convert_pb import options_from_pb

SERVICE_NAME = "dbrx.serve.v1.BuilderService"


class BuilderServicer(pb_grpc.BuilderServiceServicer):
    def __init__(self, store: JobStore, paths: PathPolicy):
        self.store, self.paths = store, paths

    async def SubmitBuild(self, request: pb.BuildRequest, context) -> jobs_pb2.Job:
        options = await asyncio.to_thread(options_from_pb, request, self.paths)  # resolves paths: file-system work
        job = await asyncio.to_thread(self.store.submit, BUILD, options.to_dict(), output_dir=options.output_dir,
                                      idempotency_key=request.idempotency_key or None)
        return job_to_pb(job)


def builder_servicer(store: JobStore, paths: PathPolicy = ANY_ABSOLUTE_PATH) -> rpc.Servicer:
    return rpc.Servicer(pb_grpc.add_BuilderServiceServicer_to_server, BuilderServicer(store, paths), SERVICE_NAME)
