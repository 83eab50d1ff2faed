"""The asyncio stream of step outputs: deltas add up to the whole result;
several streams share the running batch; leaving a stream early aborts it."""

import asyncio

from dbrx_serve.services.inference.async_engine import AsyncEngine
from dbrx_serve.services.inference.params import SamplingParams

GREEDY = SamplingParams(max_new_tokens=12, temperature=0)


async def collect(engine: AsyncEngine, prompt, params=GREEDY):
    outputs = [o async for o in engine.stream(prompt, params)]
    return outputs


def test_streams_add_up_to_generate(fp32_engine):
    prompts = [[10, 20, 30, 40], "The quick brown fox", [300, 5, 7]]
    wanted = [fp32_engine.generate([p], GREEDY)[0] for p in prompts]

    async def main():
        engine = AsyncEngine(fp32_engine)
        return await asyncio.gather(*(collect(engine, p) for p in prompts))
    for outputs, want in zip(asyncio.run(main()), wanted):
        assert tuple(t for o in outputs for t in o.token_ids) == want.output_ids
        assert "".join(o.text_delta for o in outputs) == want.text
        assert [o.finish_reason for o in outputs][-1] == want.finish_reason
        assert all(o.finish_reason is None for o in outputs[:-1])


def test_leaving_a_stream_early_aborts_and_frees_its_blocks(fp32_engine):
    async def main():
        engine = AsyncEngine(fp32_engine)
        stream = engine.stream(list(range(1, 40)), SamplingParams(max_new_tokens=100, temperature=0))
        async for _ in stream:
            used = engine.stats().kv_blocks_used
            break
        await stream.aclose()
        return used, engine.stats()
    used, after = asyncio.run(main())
    assert used > 0 and after.kv_blocks_used == 0 and after.running == 0
