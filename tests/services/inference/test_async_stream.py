"""The asyncio stream of step outputs: deltas add up to the whole result;
several streams share the running batch; leaving a stream early (even before
its request was taken) or aborting it frees its blocks; the event loop never
waits on a step; a failed step, a dead stepping thread or a closed engine end
every open stream with an error and leave no caller waiting."""

import asyncio
import contextlib
import threading
import time

import pytest

from dbrx_serve.services.inference.async_engine import AsyncEngine, EngineFailed
from dbrx_serve.services.inference.params import SamplingParams
from dbrx_serve.services.inference.stop import FinishReason

GREEDY = SamplingParams(max_new_tokens=12, temperature=0)
LONG = SamplingParams(max_new_tokens=100, temperature=0)
WAIT = 60


def run(coroutine):
    """asyncio.run with a deadline: a regression that leaves a caller waiting fails, not hangs."""
    return asyncio.run(asyncio.wait_for(coroutine, WAIT))


@contextlib.asynccontextmanager
async def running(engine):
    async_engine = AsyncEngine(engine)
    try:
        yield async_engine
    finally:
        await asyncio.to_thread(async_engine.close)


async def collect(engine: AsyncEngine, prompt, params=GREEDY, request_id=None):
    return [o async for o in engine.stream(prompt, params, request_id)]


async def until_idle(engine: AsyncEngine):
    while (stats := await engine.stats()).running + stats.waiting > 0:
        await asyncio.sleep(0.01)
    return stats


def test_streams_add_up_to_generate(fp32_engine):
    prompts = [[10, 20, 30, 40], "The quick brown fox", [300, 5, 7]]
    wanted = [fp32_engine.generate([p], GREEDY)[0] for p in prompts]

    async def main():
        async with running(fp32_engine) as engine:
            return await asyncio.gather(*(collect(engine, p) for p in prompts))
    for outputs, want in zip(run(main()), wanted):
        assert tuple(t for o in outputs for t in o.token_ids) == want.output_ids
        assert "".join(o.text_delta for o in outputs) == want.text
        assert [o.finish_reason for o in outputs][-1] == want.finish_reason
        assert all(o.finish_reason is None for o in outputs[:-1])


def test_leaving_a_stream_early_aborts_and_frees_its_blocks(fp32_engine):
    async def main():
        async with running(fp32_engine) as engine:
            stream = engine.stream(list(range(1, 40)), LONG)
            async for _ in stream:
                used = (await engine.stats()).kv_blocks_used
                break
            await stream.aclose()
            return used, await engine.stats()
    used, after = run(main())
    assert used > 0 and after.kv_blocks_used == 0 and after.running == 0


def test_a_stream_cancelled_while_its_request_is_being_added_is_aborted(fp32_engine, monkeypatch):
    """Steps make no progress here, so only an abort can make the engine idle again."""
    real_add, adding = fp32_engine.add_request, threading.Event()

    def slow_add(*args, **kwargs):
        adding.set()
        time.sleep(0.3)
        return real_add(*args, **kwargs)
    monkeypatch.setattr(fp32_engine, "add_request", slow_add)
    monkeypatch.setattr(fp32_engine, "step", lambda: [])

    async def main():
        async with running(fp32_engine) as engine:
            stream = engine.stream(list(range(1, 40)), LONG)
            first = asyncio.ensure_future(anext(stream))
            assert await asyncio.to_thread(adding.wait, 20)
            first.cancel()  # the caller gives up mid-add
            with pytest.raises(asyncio.CancelledError):
                await first
            return await until_idle(engine)
    after = run(main())
    assert after.kv_blocks_used == 0


def test_an_abort_ends_the_open_stream_as_cancelled(fp32_engine):
    async def main():
        async with running(fp32_engine) as engine:
            stream = engine.stream(list(range(1, 40)), LONG, request_id="r1")
            first = await anext(stream)
            aborted = await engine.abort("r1")
            rest = [o async for o in stream]
            return first, aborted, rest, await engine.abort("r1"), await engine.stats()
    first, aborted, rest, again, stats = run(main())
    assert first.finish_reason is None and aborted and not again
    assert rest[-1].finish_reason is FinishReason.CANCELLED and stats.kv_blocks_used == 0


def test_bad_input_raises_in_the_caller_and_leaves_the_engine_serving(fp32_engine):
    async def main():
        async with running(fp32_engine) as engine:
            with pytest.raises(Exception, match="outside the vocabulary"):
                await collect(engine, [10, 10**9])
            return await collect(engine, [10, 20, 30, 40]), await engine.stats()
    outputs, stats = run(main())
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
    first, second = run(main())
    assert first[-1].finish_reason is not None and second[-1].finish_reason is not None


def test_a_failed_step_ends_every_open_stream_and_the_engine_goes_on(fp32_engine, monkeypatch):
    real_step = fp32_engine.step
    failed = []

    def failing_once():
        if failed:
            return real_step()
        if len(fp32_engine.sequences) < 2:
            return []  # nothing done: the stepping thread goes back to its inbox for the second add
        failed.append(True)
        raise RuntimeError("CUDA out of memory (simulated)")
    monkeypatch.setattr(fp32_engine, "step", failing_once)

    async def main():
        async with running(fp32_engine) as engine:
            results = await asyncio.gather(collect(engine, [10, 20, 30]), collect(engine, [5, 6]),
                                           return_exceptions=True)
            after_failure = await engine.stats()
            return results, after_failure, await collect(engine, [10, 20, 30])
    results, after_failure, outputs = run(main())
    assert all(isinstance(r, EngineFailed) and "out of memory" in str(r) for r in results)
    assert results[0] is not results[1]  # each stream raises its own error object
    assert after_failure.kv_blocks_used == 0 and after_failure.running == after_failure.waiting == 0
    assert outputs[-1].finish_reason is not None


class Crash(BaseException):
    """Escapes the step's own error handling, as a bug in the stepping loop would."""


@pytest.mark.parametrize("method", ["step", "stats"])
def test_a_dead_stepping_thread_leaves_no_caller_waiting(method, fp32_engine, monkeypatch):
    """A crash in a step, or in a call the thread runs for a caller: the caller that
    tripped it, and every caller after, get EngineFailed."""
    def crash():
        raise Crash(f"{method} bug (simulated)")
    monkeypatch.setattr(fp32_engine, method, crash)

    async def main():
        engine = AsyncEngine(fp32_engine)
        trip = collect(engine, [10, 20, 30]) if method == "step" else engine.stats()
        with pytest.raises(EngineFailed, match="the engine stopped: Crash"):
            await trip
        with pytest.raises(EngineFailed, match="closed|the engine stopped"):  # refused, or queued then refused
            await engine.stats()
        with pytest.raises(EngineFailed, match="closed|the engine stopped"):
            await collect(engine, [10, 20, 30])
        await asyncio.to_thread(engine.close)
    run(main())
    assert fp32_engine.blocks.stats().used == 0 and not fp32_engine.has_unfinished


def test_closing_ends_open_streams_instead_of_leaving_them_waiting(fp32_engine):
    async def main():
        engine = AsyncEngine(fp32_engine)
        stream = engine.stream(list(range(1, 20)), SamplingParams(max_new_tokens=200, temperature=0))
        await anext(stream)
        await asyncio.to_thread(engine.close)
        with pytest.raises(EngineFailed, match="closed"):
            async for _ in stream:
                pass
        with pytest.raises(EngineFailed, match="closed"):
            await engine.stats()
    run(main())
    stats = fp32_engine.stats()
    assert stats.kv_blocks_used == 0 and stats.running == 0


def test_a_call_queued_behind_a_step_when_the_engine_closes_is_refused(fp32_engine, monkeypatch):
    entered, released = threading.Event(), threading.Event()
    real_step = fp32_engine.step

    def gated_step():
        entered.set()
        released.wait(timeout=20)
        return real_step()
    monkeypatch.setattr(fp32_engine, "step", gated_step)

    async def main():
        engine = AsyncEngine(fp32_engine)
        stream = engine.stream([10, 20, 30], GREEDY)
        first = asyncio.ensure_future(anext(stream))
        assert await asyncio.to_thread(entered.wait, 20)
        stats = asyncio.ensure_future(engine.stats())  # queued behind the step in progress
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(asyncio.to_thread(engine.close))
        while not engine.closed:
            await asyncio.sleep(0.005)
        released.set()
        await closing
        with pytest.raises(EngineFailed, match="closed"):
            await stats
        await first
        await stream.aclose()
    run(main())
    assert not fp32_engine.has_unfinished


def test_a_request_whose_event_loop_closed_is_aborted(fp32_engine, monkeypatch):
    """A caller's loop that closes without finishing its streams: nobody can listen, so the
    engine aborts the request at its next output instead of running it to the end."""
    real_step, steps = fp32_engine.step, []

    def counted_step():
        steps.append(1)
        return real_step()
    monkeypatch.setattr(fp32_engine, "step", counted_step)
    engine = AsyncEngine(fp32_engine)
    try:
        loop = asyncio.new_event_loop()
        stream = engine.stream(list(range(1, 40)), SamplingParams(max_new_tokens=200, temperature=0))
        loop.run_until_complete(anext(stream))
        loop.close()  # no shutdown_asyncgens: the stream's own cleanup never runs
        assert run(until_idle(engine)).kv_blocks_used == 0
    finally:
        engine.close()
    assert len(steps) <= 3  # aborted at its next output, not run on to 200 tokens
