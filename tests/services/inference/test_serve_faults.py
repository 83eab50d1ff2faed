"""Faults around a real `dbrx serve inference` process, with real gRPC clients: SIGKILL of the
server mid-work ends every open call UNAVAILABLE promptly (never a hang), and so are calls made
after it; a client process killed mid-stream has its request aborted and its KV blocks freed,
while the server serves the others on to their end and takes new calls."""

import asyncio
import signal
import subprocess
import sys

import grpc

from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2 as pb

from tests.serving import scrape, value
from tests.services.inference.served import WAIT, inference_process, request, run, stub
from tests.services.inference.test_server_cancel import rest_of

PROMPTLY = 10.0  # seconds for a client to learn its server died: from the connection, never a deadline
MAX_NEW = 200  # a request that lasts seconds on the tiny model: still running when the fault comes
CLIENT = """import sys, grpc
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2 as pb, inference_pb2_grpc as pb_grpc
request = pb.GenerateRequest(input_ids=[7, 8, 9], sampling=pb.SamplingParams(max_new_tokens=%d, temperature=0))
for message in pb_grpc.InferenceServiceStub(grpc.insecure_channel(sys.argv[1])).GenerateStream(request):
    print(len(message.token_ids), flush=True)
""" % MAX_NEW


async def until_metrics(url: str, condition) -> dict:
    """Scrape `url` until `condition(samples)` holds (a scrape is read off the event loop)."""
    while not condition(samples := await asyncio.to_thread(scrape, url)):
        await asyncio.sleep(0.02)
    return samples


async def code_of(call) -> grpc.StatusCode:
    """How a call ends: OK, or the status it fails with."""
    try:
        await (rest_of(call) if isinstance(call, grpc.aio.UnaryStreamCall) else call)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_sigkill_mid_work_ends_every_open_call_unavailable_promptly(engine_dir):
    with inference_process(engine_dir("fp32")) as child:
        async def main():
            async with grpc.aio.insecure_channel(child.address) as channel:
                streams = [stub(channel).GenerateStream(request([i + 1, 2, 3], MAX_NEW)) for i in range(8)]
                for call in streams:
                    await call.read()
                unary = stub(channel).Generate(request([4, 5, 6], MAX_NEW))
                await until_metrics(child.metrics, lambda s: value(s, "dbrx:num_requests_running") == 9)
                child.process.send_signal(signal.SIGKILL)
                codes = await asyncio.wait_for(asyncio.gather(*map(code_of, [*streams, unary])), PROMPTLY)
                late = await asyncio.wait_for(code_of(stub(channel).Generate(request([1, 2], 2))), PROMPTLY)
                return codes, late
        codes, late = run(main())
    assert codes == [grpc.StatusCode.UNAVAILABLE] * 9
    assert late == grpc.StatusCode.UNAVAILABLE


def test_a_client_process_killed_mid_stream_is_aborted_and_frees_its_blocks_while_the_rest_serve(engine_dir):
    with inference_process(engine_dir("fp32")) as child:
        client = subprocess.Popen([sys.executable, "-c", CLIENT, child.address], stdout=subprocess.PIPE, text=True)
        try:
            async def main():
                async with grpc.aio.insecure_channel(child.address) as channel:
                    survivor = stub(channel).GenerateStream(request([1, 2, 3], MAX_NEW))
                    first = await survivor.read()
                    await asyncio.to_thread(client.stdout.readline)  # the client's stream is running
                    both = await until_metrics(child.metrics, lambda s: value(s, "dbrx:num_requests_running") == 2)
                    client.kill()
                    alone = await until_metrics(child.metrics, lambda s: value(s, "dbrx:num_requests_running") == 1)
                    messages = [first] + await rest_of(survivor)
                    idle = await until_metrics(child.metrics, lambda s: value(s, "dbrx:num_requests_running") == 0)
                    after = await stub(channel).Generate(request([4, 5, 6], 4))
                    return both, alone, messages, idle, after
            both, alone, messages, idle, after = run(main())
        finally:
            client.kill()
            client.wait(WAIT)
    assert value(both, "dbrx:kv_blocks_used") > 0
    assert value(alone, "dbrx:request_success_total", finished_reason="length") == 0  # the one left is the survivor
    assert sum(len(m.token_ids) for m in messages) == MAX_NEW and messages[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert value(idle, "dbrx:kv_blocks_used") == 0 and value(idle, "dbrx:num_requests_waiting") == 0
    assert len(after.output_ids) == 4
