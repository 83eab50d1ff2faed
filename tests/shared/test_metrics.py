"""The shared inference histograms: a stream passed through `observed` records one time to first
token, one time per output token for each later message with tokens, and its end-to-end latency
once it ends (not when it is left early)."""

import asyncio
from types import SimpleNamespace

from dbrx_serve.shared.metrics import InferenceMetrics


async def messages(*counts: int):
    for count in counts:
        yield SimpleNamespace(token_ids=[7] * count)


def count(metrics: InferenceMetrics, name: str) -> float:
    return metrics.registry.get_sample_value(f"dbrx:{name}_seconds_count")


def test_a_stream_records_its_first_token_each_later_message_and_its_end():
    metrics = InferenceMetrics()

    async def main():
        seen = [m async for m in metrics.observed(messages(0, 1, 1, 0, 2))]
        async for _ in metrics.observed(messages(1, 1, 1)):
            break  # left early: no end-to-end latency
        return seen
    assert len(asyncio.run(main())) == 5
    assert count(metrics, "time_to_first_token") == 2
    assert count(metrics, "time_per_output_token") == 2  # the messages with tokens after the first
    assert count(metrics, "e2e_request_latency") == 1
