"""Cancellation and deadlines over a real server: a stream whose client cancels
or whose deadline passes is aborted and its KV blocks are back in the pool
before any further step (the engine's steps are held meanwhile, so "at once"
is asserted, not raced); the other streams finish as they would alone; a
deadline that passes while a request waits means it never reaches prefill."""

import asyncio

import grpc
import pytest

from dbrx_serve.services.inference.engine import Engine
from dbrx_serve.services.inference.params import SamplingParams

from .helpers import assert_same_greedy
from .served import inference_server, paused, request, run, stub

DEADLINE_SECONDS = 3.0  # the first tokens of all 32 streams come well before (tens of ms on the tiny model)
MAX_NEW = 40


async def until(condition, served):
    """Poll the engine's stats (on its stepping thread) until `condition(stats)`."""
    while not condition(stats := await served.stats()):
        await asyncio.sleep(0.01)
    return stats


async def rest_of(call) -> list:
    """The messages still to come on a stream read with `read()` (which cannot be mixed with `async for`)."""
    messages = []
    while (message := await call.read()) is not grpc.aio.EOF:
        messages.append(message)
    return messages


def blocks_of(engine: Engine, request_ids) -> int:
    return sum(len(engine.sequences[r].block_table) for r in request_ids)


@pytest.fixture(scope="module")
def served(engine_dir):
    with inference_server(engine_dir("fp32")) as served:
        yield served


def test_cancelling_half_of_32_streams_frees_their_blocks_at_once_and_the_rest_finish(
        served, fp32_engine, reference_model, banned):
    prompts = [[(7 * i + j) % 500 for j in range(1, 20 + i % 5)] for i in range(32)]
    cancelled, timed_out, kept = range(0, 8), range(8, 16), range(16, 32)

    async def main():
        async with grpc.aio.insecure_channel(served.address) as channel:
            calls = [stub(channel).GenerateStream(named(request(p, MAX_NEW), i),
                                                  timeout=DEADLINE_SECONDS if i in timed_out else None)
                     for i, p in enumerate(prompts)]
            firsts = [await call.read() for call in calls]  # every stream is running (prefilled)
            with paused(served.engine):
                before = await until(lambda s: True, served)
                survivors = [f"r{i}" for i in kept]
                for i in cancelled:
                    calls[i].cancel()
                await until(lambda s: s.running == 24, served)  # the client cancels: at once
                after = await until(lambda s: s.running == 16, served)  # the deadlines pass
                kept_blocks = blocks_of(served.engine, survivors)
                assert sorted(served.engine.sequences) == sorted(survivors)
            rest = [await rest_of(calls[i]) for i in kept]
            codes = [await calls[i].code() for i in range(16)]
            return firsts, before, after, kept_blocks, rest, codes
    firsts, before, after, kept_blocks, rest, codes = run(main())
    assert before.running == 32 and after.kv_blocks_used == kept_blocks < before.kv_blocks_used
    assert after.waiting == 0
    assert codes == [grpc.StatusCode.CANCELLED] * 8 + [grpc.StatusCode.DEADLINE_EXCEEDED] * 8
    identical = 0
    for i, messages in zip(kept, rest):
        got = list(firsts[i].token_ids) + [t for m in messages for t in m.token_ids]
        alone = fp32_engine.generate([prompts[i]], SamplingParams(max_new_tokens=MAX_NEW, temperature=0))[0]
        identical += assert_same_greedy(got, alone.output_ids, prompts[i], reference_model, banned)
    assert identical >= 14  # the rest differ only at a float32 near-tie of the reference
    idle = run(until(lambda s: s.running == 0, served))
    assert idle.kv_blocks_used == 0


def named(message, i: int):
    message.request_id = f"r{i}"
    return message


@pytest.fixture(scope="module")
def one_at_a_time(engine_dir):
    """A batch of one and a queue of one: what waits, and what the queue refuses, is certain."""
    with inference_server(engine_dir("fp32"), max_batch_size=1, max_queue_size=1) as served:
        yield served


def test_a_deadline_that_passes_in_the_queue_never_reaches_prefill(one_at_a_time):
    served = one_at_a_time

    async def main():
        async with grpc.aio.insecure_channel(served.address) as channel:
            blocker = stub(channel).GenerateStream(request([1, 2, 3], 200))
            await blocker.read()
            with paused(served.engine):
                admitted = (await served.stats()).num_admitted
                with pytest.raises(grpc.aio.AioRpcError) as late:
                    await stub(channel).Generate(request([4, 5, 6], 4), timeout=0.5)
                gone = await until(lambda s: s.waiting == 0, served)
                blocker.cancel()
            idle = await until(lambda s: s.running == 0, served)
            normal = await stub(channel).Generate(request([4, 5, 6], 4))
            return admitted, late.value.code(), gone, idle, normal
    admitted, code, gone, idle, normal = run(main())
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert gone.num_admitted == idle.num_admitted == admitted  # the late request never began its prefill
    assert idle.kv_blocks_used == 0 and len(normal.output_ids) == 4


def test_a_full_queue_is_resource_exhausted_and_a_request_after_it_works(one_at_a_time):
    served = one_at_a_time

    async def main():
        async with grpc.aio.insecure_channel(served.address) as channel:
            running = stub(channel).GenerateStream(request([1, 2, 3], 200))
            await running.read()
            with paused(served.engine):
                waiting = stub(channel).GenerateStream(request([4, 5], 4))
                await until(lambda s: s.waiting == 1, served)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub(channel).Generate(request([6, 7], 4))
                running.cancel()
            assert len([t for m in [m async for m in waiting] for t in m.token_ids]) == 4  # it was only waiting
            normal = await stub(channel).Generate(request([6, 7], 4))
            return refused.value, normal
    refused, normal = run(main())
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "the waiting queue is full (1 requests): retry later" in refused.details()
    assert len(normal.output_ids) == 4
