"""The asyncio stream of step outputs: deltas add up to the whole result;
several streams share the running batch; leaving a stream early aborts it;
the event loop never waits on a step; a failed step fails its streams only."""

import asyncio
import contextlib
import threading

import pytest

from dbrx_serve.services.inference.async_engine import AsyncEngine
from dbrx_serve.services.inference.params import SamplingParams

GREEDY = SamplingParams(max_new_tokens=12, temperature=0)


@contextlib.asynccontextmanager
async def running(engine):
    async_engine = AsyncEngine(engine)
    try:
        yield async_engine
    finally:
        await asyncio.to_thread(async_engine.close)


async def collect(engine: AsyncEngine, prompt, params=GREEDY):
    return [o async for o in engine.stream(prompt, params)]


def test_streams_add_up_to_generate(fp32_engine):
    prompts = [[10, 20, 30, 40], "The quick brown fox", [300, 5, 7]]
    wanted = [fp32_engine.generate([p], GREEDY)[0] for p in prompts]

    async def main():
        async with running(fp32_engine) as engine:
            return await asyncio.gather(*(collect(engine, p) for p in prompts))
    for outputs, want in zip(asyncio.run(main()), wanted):
        assert tuple(t for o in outputs for t in o.token_ids) == want.output_ids
        assert "".join(o.text_delta for o in outputs) == want.text
        assert [o.finish_reason for o in outputs][-1] == want.finish_reason
        assert all(o.finish_reason is None for o in outputs[:-1])


def test_leaving_a_stream_early_aborts_and_frees_its_blocks(fp32_engine):
    async def main():
        async with running(fp32_engine) as engine:
            stream = engine.stream(list(range(1, 40)), SamplingParams(max_new_tokens=100, temperature=0))
            async for _ in stream:
                used = (await engine.stats()).kv_blocks_used
                break
            await stream.aclose()
            return used, await engine.stats()
    used, after = asyncio.run(main())
    assert used > 0 and after.kv_blocks_used == 0 and after.running == 0


def test_bad_input_raises_in_the_caller_and_leaves_the_engine_serving(fp32_engine):
    async def main():
        async with running(fp32_engine) as engine:
            with pytest.raises(Exception, match="outside the vocabulary"):
                await collect(engine, [10, 10**9])
            return await collect(engine, [10, 20, 30, 40]), await engine.stats()
    outputs, stats = asyncio.run(main())
    assert outputs[-1].finish_reason is not None and stats.running == stats.waiting == 0


def test_the_event_loop_runs_while_a_step_is_in_progress(fp32_engine, monkeypatch):
    """A step held open until the loop has started a second stream: a design in
    which the loop waits for the step never gets there (the step gives up, the test fails)."""
    entered, released = threading.Event(), threading.Event()
    real_step = fp32_engine.step

    def gated_step():
        entered.set()
        assert released.wait(timeout=20), "the event loop was blocked during a step"
        return real_step()
    monkeypatch.setattr(fp32_engine, "step", gated_step)

    async def main():
        async with running(fp32_engine) as engine:
            first = asyncio.ensure_future(collect(engine, [10, 20, 30]))
            assert await asyncio.to_thread(entered.wait, 20)
            second = engine.stream([40, 50, 60], GREEDY)
            first_of_second = asyncio.ensure_future(anext(second))
            await asyncio.sleep(0.05)  # the second stream's add is posted; the loop is still free
            released.set()
            return await first, [await first_of_second] + [o async for o in second]
    first, second = asyncio.run(main())
    assert first[-1].finish_reason is not None and second[-1].finish_reason is not None


def test_a_failed_step_fails_the_open_streams_and_the_engine_goes_on(fp32_engine, monkeypatch):
    real_step = fp32_engine.step
    failures = iter([RuntimeError("CUDA out of memory (simulated)")])

    def failing_once():
        if (error := next(failures, None)) is not None:
            raise error
        return real_step()
    monkeypatch.setattr(fp32_engine, "step", failing_once)

    async def main():
        async with running(fp32_engine) as engine:
            with pytest.raises(RuntimeError, match="out of memory"):
                await collect(engine, [10, 20, 30])
            after_failure = await engine.stats()
            return after_failure, await collect(engine, [10, 20, 30])
    after_failure, outputs = asyncio.run(main())
    assert after_failure.kv_blocks_used == 0 and after_failure.running == after_failure.waiting == 0
    assert outputs[-1].finish_reason is not None


def test_closing_fails_open_streams_instead_of_leaving_them_waiting(fp32_engine):
    async def main():
        engine = AsyncEngine(fp32_engine)
        stream = engine.stream(list(range(1, 20)), SamplingParams(max_new_tokens=200, temperature=0))
        await anext(stream)
        await asyncio.to_thread(engine.close)
        with pytest.raises(RuntimeError, match="closed"):
            async for _ in stream:
                pass
        return fp32_engine.stats()
    stats = asyncio.run(main())
    assert stats.kv_blocks_used == 0 and stats.running == 0
