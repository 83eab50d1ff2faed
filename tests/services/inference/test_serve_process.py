"""`dbrx serve inference` as a real process: it says where it listens, logs its
memory plan (the pool GetModelInfo reports), its health goes SERVING once the
engine is loaded and NOT_SERVING on SIGTERM, the streams in flight then finish
or end CANCELLED within the grace period, new calls are refused, and the
process exits 0. Under a memory budget too small for one max_seq_len sequence
it exits 2 with the numbers, no traceback."""

import asyncio
import signal
import subprocess
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dbrx_serve.cli.launcher import wait_for_address
from dbrx_serve.services.inference.server import SERVICE_NAME
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2 as pb

from .served import NOT_SERVING, SERVING, WAIT, request, stub
from .test_memory_plan import BLOCKS_PER_SEQ, bytes_per_block, weight_bytes
from .test_server_cancel import rest_of

GRACE_SECONDS = 1.0
LENGTHS = (3, 6, 250)  # 250 tokens may or may not be done within the grace period: either outcome is checked
NUM_BLOCKS = 3 * BLOCKS_PER_SEQ + 5  # what the budget leaves: 3 streams of up to 32 blocks each fit


def serve(engine_dir, *flags: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "dbrx_serve", "serve", "inference", "--engine_dir", str(engine_dir),
               "--port", "0", "--device", "cpu", *flags]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_drains_in_flight_streams_and_health_goes_not_serving(engine_dir):
    budget = weight_bytes(engine_dir("fp32")) + NUM_BLOCKS * bytes_per_block(engine_dir("fp32"))
    process = serve(engine_dir("fp32"), "--grace_seconds", str(GRACE_SECONDS), "--memory_budget_bytes", str(budget))
    try:
        address = wait_for_address(process, "inference")
        statuses, outcomes, late, info = asyncio.run(asyncio.wait_for(drive(address, process), WAIT))
        assert process.wait(WAIT) == 0
    finally:
        process.kill()
    stderr = process.stderr.read()
    assert "weights loaded onto cpu" in stderr and "GB/s" in stderr  # the load time is logged
    assert info.num_kv_blocks == NUM_BLOCKS and "memory plan on cpu: budget" in stderr, stderr
    assert f"KV pool {NUM_BLOCKS * bytes_per_block(engine_dir('fp32')) / 1e3:.2f} kB: {NUM_BLOCKS} blocks" in stderr
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
        info = await stub(channel).GetModelInfo(pb.GetModelInfoRequest())
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
    return statuses, outcomes, late, info


def test_a_budget_too_small_for_one_max_length_sequence_exits_2_with_the_numbers(engine_dir):
    budget = weight_bytes(engine_dir("fp32")) + (BLOCKS_PER_SEQ - 1) * bytes_per_block(engine_dir("fp32"))
    process = serve(engine_dir("fp32"), "--memory_budget_bytes", str(budget))
    try:
        assert process.wait(WAIT) == 2
    finally:
        process.kill()
    stderr = process.stderr.read()
    assert "dbrx serve inference: the engine cannot hold one sequence of max_seq_len 256" in stderr, stderr
    assert f"needs {BLOCKS_PER_SEQ} KV blocks" in stderr and "31 blocks" in stderr and "Traceback" not in stderr


async def outcome(call, first) -> tuple:
    try:
        messages = [first] + await rest_of(call)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details(), None, None
    return grpc.StatusCode.OK, "", sum(len(m.token_ids) for m in messages), messages[-1].finish_reason
