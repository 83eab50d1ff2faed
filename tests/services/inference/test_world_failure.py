"""A rank of a served world killed with SIGKILL in the middle of streams: rank 0 ends every open
stream UNAVAILABLE, naming the lost rank, health goes NOT_SERVING, and the whole world exits
(non-zero) with no process left behind."""

import asyncio
import os
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dbrx_serve.services.inference.server import SERVICE_NAME

from .multirank import WAIT, assert_all_gone, rank_process, served_world
from .served import NOT_SERVING, SERVING, request, stub
from .test_server_cancel import rest_of


@pytest.mark.timeout(2 * WAIT)
def test_a_rank_killed_mid_stream_fails_every_stream_and_ends_the_world(engine_dir):
    with served_world(engine_dir("tp2")) as (process, address, world):
        codes, statuses = asyncio.run(asyncio.wait_for(kill_rank_1_mid_stream(address, world), WAIT))
        assert process.wait(WAIT) != 0
        assert_all_gone(world)
    stderr = "".join(process.stderr_lines)
    for code, details in codes:
        assert code == grpc.StatusCode.UNAVAILABLE and "the MPI world lost a rank" in details, details
    assert statuses[:2] == [SERVING, NOT_SERVING], statuses
    assert "health is NOT_SERVING" in stderr


async def kill_rank_1_mid_stream(address: str, world: str):
    """Three streams, each past its first token, then SIGKILL to rank 1; each stream's end, and the
    health statuses seen from SERVING on."""
    async with grpc.aio.insecure_channel(address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        statuses = [(await watch.read()).status]
        calls = [stub(channel).GenerateStream(request([1, 2, 3 + i], 200)) for i in range(3)]
        for call in calls:
            await call.read()
        os.kill(rank_process(world, 1), signal.SIGKILL)
        codes = [await outcome(call) for call in calls]
        while (message := await watch_read(watch)) is not None:
            statuses.append(message.status)
    return codes, statuses


async def outcome(call) -> tuple:
    try:
        await rest_of(call)
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details()


async def watch_read(watch):
    """The next health message, None once the server is gone."""
    try:
        message = await watch.read()
    except grpc.aio.AioRpcError:
        return None
    return None if message is grpc.aio.EOF else message
