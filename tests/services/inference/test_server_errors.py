"""Every bad request gets INVALID_ARGUMENT with a message that says what to fix,
on both RPCs, and the request right after it works; a failed step or a dead
engine is UNAVAILABLE with the reason, never INTERNAL; health follows the
engine: NOT_SERVING while it loads, SERVING once warmed up, NOT_SERVING
once its stepping thread has died."""

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dbrx_serve.services.inference import server as inference
from dbrx_serve.services.inference.config import InferenceServiceConfig
from dbrx_serve.shared import rpc
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2 as pb
from dbrx_serve.shared.generated.dbrx.serve.v1 import tokenizer_pb2

from .served import NOT_SERVING, SERVING, WAIT, inference_server, request, run, streamed, stub

SAMPLING = dict(max_new_tokens=4, temperature=0)


def chat(*turns) -> list[tokenizer_pb2.ChatMessage]:
    return [tokenizer_pb2.ChatMessage(role=role, content=content) for role, content in turns]


def with_sampling(**change) -> pb.GenerateRequest:
    return pb.GenerateRequest(input_ids=[1, 2, 3], sampling=pb.SamplingParams(**{**SAMPLING, **change}))


BAD_REQUESTS = {
    "no prompt": (pb.GenerateRequest(sampling=pb.SamplingParams(**SAMPLING)),
                  "the prompt is empty: give exactly one of text, input_ids or messages"),
    "empty text": (pb.GenerateRequest(text="", sampling=pb.SamplingParams(**SAMPLING)), "the prompt is empty"),
    "text and ids": (pb.GenerateRequest(text="hi", input_ids=[1], sampling=pb.SamplingParams(**SAMPLING)),
                     "give exactly one of text, input_ids or messages, not text and input_ids"),
    "ids and messages": (pb.GenerateRequest(input_ids=[1], messages=chat(("user", "hi")),
                                            sampling=pb.SamplingParams(**SAMPLING)), "not input_ids and messages"),
    "id outside the vocabulary": (pb.GenerateRequest(input_ids=[1, 100352], sampling=pb.SamplingParams(**SAMPLING)),
                                  "prompt id 100352 is outside the vocabulary 0..100351"),
    "max_new_tokens 0": (with_sampling(max_new_tokens=0), "max_new_tokens must be an integer >= 1, got 0"),
    "max_new_tokens beyond max_seq_len": (with_sampling(max_new_tokens=254),
                                          "exceeds the engine's max_seq_len 256: lower max_new_tokens"),
    "negative temperature": (with_sampling(temperature=-0.5), "temperature must be >= 0"),
    "top_p above 1": (with_sampling(top_p=1.5), "top_p must lie in [0, 1] (0 turns it off), got 1.5"),
    "top_p below 0": (with_sampling(top_p=-0.25), "top_p must lie in [0, 1] (0 turns it off), got -0.25"),
    "too many ids": (pb.GenerateRequest(input_ids=[1] * 129, sampling=pb.SamplingParams(**SAMPLING)),
                     "the prompt has 129 tokens, more than the engine's max_input_len 128: shorten it"),
    "text of too many tokens": (pb.GenerateRequest(text="fox " * 200, sampling=pb.SamplingParams(**SAMPLING)),
                                "tokens, more than the engine's max_input_len 128: shorten it"),
    "text too long to encode": (pb.GenerateRequest(text="x" * 1_000_000, sampling=pb.SamplingParams(**SAMPLING)),
                                "the prompt has 1000000 characters, more than can fit in the engine's max_input_len"),
    "too many stop strings": (with_sampling(stop=["x"] * 17), "give at most 16 stop strings, got 17"),
    "too long a stop string": (with_sampling(stop=["x" * 257]), "at most 16 stop strings of at most 256 characters"),
    "too many end ids": (with_sampling(end_id=list(range(65))), "give at most 64 end ids, got 65"),
    "too many chat messages": (pb.GenerateRequest(messages=chat(*[("user", "hi")] * 257),
                                                  sampling=pb.SamplingParams(**SAMPLING)),
                               "give at most 256 chat messages, got 257"),
    "a chat without turns": (pb.GenerateRequest(messages=chat(("system", "Be brief.")),
                                                sampling=pb.SamplingParams(**SAMPLING)), "the chat has no turns"),
    "too long a request id": (pb.GenerateRequest(input_ids=[1], request_id="r" * 129,
                                                 sampling=pb.SamplingParams(**SAMPLING)),
                              "request_id has 129 characters; use at most 128"),
}


@pytest.fixture(scope="module")
def served(engine_dir):
    with inference_server(engine_dir("fp32")) as served:
        yield served


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_a_bad_request_says_what_to_fix_and_the_next_one_works(served, name):
    message, expected = BAD_REQUESTS[name]

    async def main():
        async with grpc.aio.insecure_channel(served.address) as channel:
            errors = []
            for call in (stub(channel).Generate(message), streamed(stub(channel), message)):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                errors.append(refused.value)
            return errors, await stub(channel).Generate(request([1, 2, 3], 4)), await served.stats()
    errors, normal, stats = run(main())
    for error in errors:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert expected in error.details()
    assert len(normal.output_ids) == 4
    assert (stats.running, stats.waiting, stats.kv_blocks_used) == (0, 0, 0)


def test_a_duplicate_request_id_in_flight_is_refused(served):
    async def main():
        async with grpc.aio.insecure_channel(served.address) as channel:
            first = stub(channel).GenerateStream(pb.GenerateRequest(
                input_ids=[1, 2], request_id="same", sampling=pb.SamplingParams(max_new_tokens=100, temperature=0)))
            await first.read()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub(channel).Generate(pb.GenerateRequest(input_ids=[1], request_id="same",
                                                                sampling=pb.SamplingParams(**SAMPLING)))
            first.cancel()
            return refused.value
    refused = run(main())
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "already in use" in refused.details()


class Crash(BaseException):
    """Escapes the step's own error handling, as a bug in the stepping loop would."""


async def health(channel) -> int:
    check = health_pb2_grpc.HealthStub(channel).Check
    return (await check(health_pb2.HealthCheckRequest(service=inference.SERVICE_NAME))).status


async def until_health(channel, status: int) -> None:
    while await health(channel) != status:
        await asyncio.sleep(0.02)


def test_health_and_unavailable_follow_the_engine_from_loading_to_a_dead_stepping_thread(engine_dir):
    """One event loop for server and client: each state is set up before it is looked at."""
    async def main():
        server, port = inference.build_server(InferenceServiceConfig(str(engine_dir("fp32")), device="cpu"))
        await rpc.start(server, serving=False)  # listening; the engine is not loaded yet
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            loading = [await health(channel), await refused(stub(channel).Generate(request([1, 2], 2)))]
            server.host.start(server)
            await until_health(channel, SERVING)
            served = await stub(channel).Generate(request([1, 2], 2))
            failed = await failed_step(server.host.engine.engine, channel)
            server.host.engine.engine.step = crash
            died = await refused(stub(channel).Generate(request([1, 2], 2)))
            await until_health(channel, NOT_SERVING)
            after = await refused(stub(channel).Generate(request([1, 2], 2)))
        await server.stop(None)
        await server.host.close()
        return loading, served, failed, died, after
    loading, served, failed, died, after = asyncio.run(asyncio.wait_for(main(), WAIT))
    assert loading[0] == NOT_SERVING
    assert loading[1] == (grpc.StatusCode.UNAVAILABLE, "the engine is still loading: retry once health says SERVING")
    assert len(served.output_ids) == 2
    assert failed[0] == grpc.StatusCode.UNAVAILABLE and "an engine step failed: RuntimeError('out of memory" in failed[1]
    assert died[0] == grpc.StatusCode.UNAVAILABLE and "the engine stopped: Crash" in died[1]
    assert after[0] == grpc.StatusCode.UNAVAILABLE and after[1].startswith("the engine has stopped")


async def refused(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value.code(), error.value.details()


def crash():
    raise Crash("a bug in the stepping loop (simulated)")


async def failed_step(engine, channel) -> tuple[grpc.StatusCode, str]:
    """A step that raises once: the request in it is UNAVAILABLE with the reason; the engine goes on."""
    def fail_once():
        del engine.step
        raise RuntimeError("out of memory (simulated)")
    engine.step = fail_once
    outcome = await refused(stub(channel).Generate(request([1, 2], 2)))
    assert await health(channel) == SERVING
    assert len((await stub(channel).Generate(request([1, 2], 2))).output_ids) == 2
    return outcome
