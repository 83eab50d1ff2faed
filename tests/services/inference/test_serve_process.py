"""`dbrx serve inference` as a real process: it says where it listens, its
health goes SERVING once the engine is loaded and NOT_SERVING on SIGTERM, the
streams in flight then finish or end CANCELLED within the grace period, new
calls are refused, and the process exits 0."""

import asyncio
import signal
import subprocess
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dbrx_serve.cli.launcher import wait_for_address
from dbrx_serve.services.inference.server import SERVICE_NAME

from .served import NOT_SERVING, SERVING, WAIT, request, stub
from .test_server_cancel import rest_of

GRACE_SECONDS = 1.0
LENGTHS = (3, 6, 250)  # 250 tokens may or may not be done within the grace period: either outcome is checked


def test_sigterm_drains_in_flight_streams_and_health_goes_not_serving(engine_dir):
    command = [sys.executable, "-m", "dbrx_serve", "serve", "inference", "--engine_dir", str(engine_dir("fp32")),
               "--port", "0", "--device", "cpu", "--grace_seconds", str(GRACE_SECONDS)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = wait_for_address(process, "inference")
        statuses, outcomes, late = asyncio.run(asyncio.wait_for(drive(address, process), WAIT))
        assert process.wait(WAIT) == 0
    finally:
        process.kill()
    stderr = process.stderr.read()
    assert "weights loaded onto cpu" in stderr and "GB/s" in stderr  # the load time is logged
    assert statuses[-2:] == [SERVING, NOT_SERVING] and set(statuses[:-2]) <= {NOT_SERVING}
    for n, (code, details, num_tokens, finish_reason) in zip(LENGTHS, outcomes):
        if code == grpc.StatusCode.OK:
            assert num_tokens == n and finish_reason != 0  # finished, whole
        else:
            assert code == grpc.StatusCode.CANCELLED and "the server shut down" in details, (code, details)
    assert outcomes[0][0] == grpc.StatusCode.OK  # 3 tokens finish within a second
    assert late == grpc.StatusCode.UNAVAILABLE


async def drive(address: str, process: subprocess.Popen):
    async with grpc.aio.insecure_channel(address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        statuses = [(await watch.read()).status]
        while statuses[-1] != SERVING:
            statuses.append((await watch.read()).status)
        calls = [stub(channel).GenerateStream(request([1, 2, 3], n)) for n in LENGTHS]
        firsts = [await call.read() for call in calls]
        process.send_signal(signal.SIGTERM)
        statuses.append((await watch.read()).status)
        outcomes = [await outcome(call, first) for call, first in zip(calls, firsts)]
        try:
            await stub(channel).Generate(request([1, 2, 3], 2))
            late = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            late = error.code()
    return statuses, outcomes, late


async def outcome(call, first) -> tuple:
    try:
        messages = [first] + await rest_of(call)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details(), None, None
    return grpc.StatusCode.OK, "", sum(len(m.token_ids) for m in messages), messages[-1].finish_reason
