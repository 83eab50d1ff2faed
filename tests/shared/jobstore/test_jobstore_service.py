"""JobService over a real gRPC server (port 0) and a real channel."""

import asyncio
import threading

import grpc
import pytest

from dbrx_serve.shared import rpc
from dbrx_serve.shared.generated.dbrx.serve.v1 import jobs_pb2 as pb, jobs_pb2_grpc as pb_grpc
from dbrx_serve.shared.jobstore import JobState, Worker
from dbrx_serve.shared.jobstore.service import job_servicer

KIND = "convert"
WAIT = 30


async def with_stub(store, body):
    server, port = rpc.build_server([job_servicer(store, watch_poll_seconds=0.02)], rpc.ServerConfig())
    await rpc.start(server)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await body(pb_grpc.JobServiceStub(channel))
    finally:
        await server.stop(None)


def call(store, body):
    return asyncio.run(with_stub(store, body))


async def status_of(rpc_call):
    with pytest.raises(grpc.aio.AioRpcError) as error:
        result = rpc_call()
        if hasattr(result, "__aiter__"):
            [event async for event in result]
        else:
            await result
    return error.value.code()


def test_get_job_converts_every_field(store):
    job = store.submit(KIND, {"tp_size": 2}, output_dir="/ckpt", idempotency_key="k1", max_attempts=4)
    got = call(store, lambda stub: stub.GetJob(pb.GetJobRequest(id=job.id)))
    assert (got.id, got.kind, got.state, got.output_dir) == (job.id, pb.JOB_KIND_CONVERT, pb.JOB_STATE_QUEUED, "/ckpt")
    assert (got.attempts, got.max_attempts, got.idempotency_key, got.spec_json) == (0, 4, "k1", '{"tp_size": 2}')
    assert got.HasField("created_at") and not got.HasField("started_at")


def test_unknown_and_malformed_ids_get_not_found_and_invalid_argument(store):
    async def body(stub):
        unknown = "00000000-0000-0000-0000-000000000000"
        return [await status_of(lambda: stub.GetJob(pb.GetJobRequest(id=unknown))),
                await status_of(lambda: stub.GetJob(pb.GetJobRequest(id="nope"))),
                await status_of(lambda: stub.CancelJob(pb.CancelJobRequest(id=unknown))),
                await status_of(lambda: stub.WatchJob(pb.WatchJobRequest(id=unknown))),
                await status_of(lambda: stub.WatchJob(pb.WatchJobRequest(id="nope")))]

    assert call(store, body) == [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT,
                                 grpc.StatusCode.NOT_FOUND, grpc.StatusCode.NOT_FOUND,
                                 grpc.StatusCode.INVALID_ARGUMENT]


def test_list_jobs_filters_by_kind_and_state(store):
    converts = [store.submit(KIND, {"n": n}) for n in range(3)]
    store.submit("build", {})
    store.lease(KIND, "w1", 30)

    async def body(stub):
        every = await stub.ListJobs(pb.ListJobsRequest())
        running = await stub.ListJobs(pb.ListJobsRequest(kind=pb.JOB_KIND_CONVERT, state=pb.JOB_STATE_RUNNING))
        builds = await stub.ListJobs(pb.ListJobsRequest(kind=pb.JOB_KIND_BUILD, limit=5))
        return every, running, builds

    every, running, builds = call(store, body)
    assert len(every.jobs) == 4
    assert [j.id for j in running.jobs] == [converts[0].id] and running.jobs[0].lease_owner == "w1"
    assert [j.kind for j in builds.jobs] == [pb.JOB_KIND_BUILD]


@pytest.mark.parametrize("limit", [-1, 1001])
def test_a_list_limit_out_of_range_is_invalid(store, limit):
    code = call(store, lambda stub: status_of(lambda: stub.ListJobs(pb.ListJobsRequest(limit=limit))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_cancel_job_cancels_a_queued_job(store):
    job = store.submit(KIND, {})
    cancelled = call(store, lambda stub: stub.CancelJob(pb.CancelJobRequest(id=job.id)))
    assert cancelled.state == pb.JOB_STATE_CANCELLED and cancelled.HasField("finished_at")
    assert store.get(job.id).state == JobState.CANCELLED


def test_watch_job_streams_events_live_until_the_job_ends(store):
    """The handler waits for the watcher to see each step, so the stream is live, not a replay."""
    job = store.submit(KIND, {})
    seen = {step: threading.Event() for step in range(1, 5)}

    def handle(job, ctx):
        for step in range(1, 5):
            ctx.progress(step / 4, f"step {step}")
            assert seen[step].wait(WAIT), f"the watcher never saw step {step}"
        return {"steps": 4}

    thread = threading.Thread(target=Worker(store, KIND, handle, owner="w1", lease_seconds=2).run_once)

    async def body(stub):
        events = []
        async for event in stub.WatchJob(pb.WatchJobRequest(id=job.id)):
            events.append(event)
            if event.message.startswith("step "):
                seen[int(event.message.split()[1])].set()
            if len(events) == 1:
                thread.start()
        return events

    events = call(store, body)
    thread.join(WAIT)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].state == pb.JOB_STATE_QUEUED and events[-1].state == pb.JOB_STATE_SUCCEEDED
    assert [e.progress for e in events if e.message.startswith("step")] == [0.25, 0.5, 0.75, 1.0]
    assert all(e.job_id == job.id and e.HasField("time") for e in events)


def test_watch_job_resumes_after_a_seq_and_ends_at_once_for_an_ended_job(store):
    job = store.submit(KIND, {})
    store.cancel(job.id)

    async def body(stub):
        return ([e.seq async for e in stub.WatchJob(pb.WatchJobRequest(id=job.id))],
                [e.seq async for e in stub.WatchJob(pb.WatchJobRequest(id=job.id, after_seq=1))],
                [e.seq async for e in stub.WatchJob(pb.WatchJobRequest(id=job.id, after_seq=2))])

    assert call(store, body) == ([1, 2], [2], [])


@pytest.mark.parametrize("request_", [pb.ListJobsRequest(kind=99), pb.ListJobsRequest(state=42),
                                      pb.ListJobsRequest(kind=-1)])
def test_unknown_kind_or_state_in_list_jobs_is_invalid_not_all(store, request_):
    store.submit(KIND, {})

    async def body(stub):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.ListJobs(request_)
        return error.value
    error = call(store, body)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown job " in error.details()


def test_a_huge_job_id_is_refused_with_its_echo_cut(store):
    """The refusal repeats the id: whole, it would overflow the client's 8 KiB header limit."""
    async def body(stub):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.GetJob(pb.GetJobRequest(id="x" * 20_000))
        return error.value
    error = call(store, body)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "is not a UUID" in error.details()
    assert len(error.details()) < 400
