"""Prometheus metrics that more than one server records: the latency of
inference requests, as the OpenAI-compatible gateway sees them and as the
InferenceService sees them (the same three histograms, so dashboards read
either).

    metrics = InferenceMetrics(registry)
    async for output in metrics.observed(stream):   # anything with .token_ids
        ...

Time to first token runs from the request's start to its first message with
a token; time per output token is the gap between two messages with tokens
over the tokens the later one brings; end-to-end latency is observed when a
stream ends normally (not when it is cancelled or fails). Each server keeps
its own registry (a process may run several, as the tests do)."""

import time
from typing import AsyncIterator, TypeVar

from prometheus_client import CollectorRegistry, Histogram

T = TypeVar("T")
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0)  # vLLM's
TPOT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0)


class InferenceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.time_to_first_token = Histogram(
            "dbrx_time_to_first_token_seconds", "Time from a request's start to its first token.",
            buckets=TTFT_BUCKETS, registry=self.registry)
        self.time_per_output_token = Histogram(
            "dbrx_time_per_output_token_seconds", "Time per output token after the first.",
            buckets=TPOT_BUCKETS, registry=self.registry)
        self.e2e_request_latency = Histogram(
            "dbrx_e2e_request_latency_seconds", "Time from a request's start to its last token.",
            buckets=E2E_BUCKETS, registry=self.registry)

    def timer(self, started: float | None = None) -> "RequestTimer":
        """A request's timer; `started` (time.perf_counter()) defaults to now."""
        return RequestTimer(self, time.perf_counter() if started is None else started)

    async def observed(self, messages: AsyncIterator[T], started: float | None = None) -> AsyncIterator[T]:
        """`messages` (each with .token_ids) passed through, timed."""
        timer = self.timer(started)
        async for message in messages:
            timer.tokens(len(message.token_ids))
            yield message
        timer.finish()


class RequestTimer:
    def __init__(self, metrics: InferenceMetrics, started: float):
        self.metrics, self.started, self.last, self.num_tokens = metrics, started, started, 0

    def tokens(self, count: int) -> None:
        """A message with `count` new tokens has come."""
        if count == 0:
            return
        now = time.perf_counter()
        if self.num_tokens == 0:
            self.metrics.time_to_first_token.observe(now - self.started)
        else:
            self.metrics.time_per_output_token.observe((now - self.last) / count)
        self.last, self.num_tokens = now, self.num_tokens + count

    def finish(self) -> None:
        self.metrics.e2e_request_latency.observe(time.perf_counter() - self.started)
