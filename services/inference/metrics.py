"""The InferenceService's own metrics, beside the latency histograms every inference front end
records (shared/metrics.py): prompt and generated tokens, finished requests by finish reason
(counted as requests end), and the engine's running and waiting requests and KV blocks (asked
of the engine's stepping thread at each scrape). Names follow vLLM's under `dbrx:`."""

import logging
from typing import AsyncIterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

from .host import EngineHost
from .outputs import StepOutput

log = logging.getLogger("dbrx_serve.inference")
STATS_TIMEOUT_SECONDS = 5.0  # a scrape waits at most this long for the step in progress
GAUGES = {"running": ("dbrx:num_requests_running", "Requests in the running batch."),
          "waiting": ("dbrx:num_requests_waiting", "Requests waiting to be admitted."),
          "kv_blocks_used": ("dbrx:kv_blocks_used", "KV-cache blocks held by requests."),
          "kv_blocks_free": ("dbrx:kv_blocks_free", "KV-cache blocks free.")}


class TokenCounts:
    def __init__(self, registry: CollectorRegistry):
        self.prompt_tokens = Counter("dbrx:prompt_tokens", "Prompt tokens of the requests admitted.",
                                     registry=registry)
        self.generation_tokens = Counter("dbrx:generation_tokens", "Tokens generated.", registry=registry)
        self.finished = Counter("dbrx:request_success", "Requests finished, by finish reason "
                                "(length, end_id, stop, cancelled, deadline).", ["finished_reason"], registry=registry)

    async def counted(self, num_prompt_tokens: int, outputs: AsyncIterator[StepOutput]) -> AsyncIterator[StepOutput]:
        """`outputs` passed through, their tokens and finish reason counted."""
        self.prompt_tokens.inc(num_prompt_tokens)
        async for output in outputs:
            self.generation_tokens.inc(len(output.token_ids))
            if output.finish_reason is not None:
                self.finished.labels(output.finish_reason.value).inc()
            yield output


class EngineGauges:
    """A collector: the engine's stats at scrape time (nothing while it loads)."""

    def __init__(self, host: EngineHost):
        self.host = host

    def collect(self):
        if self.host.engine is None:
            return
        try:
            stats = self.host.engine.stats_now(STATS_TIMEOUT_SECONDS)
        except Exception as error:  # stopped, or a step longer than the timeout: skip this scrape
            log.warning("engine stats unavailable for a scrape: %s", error)
            return
        for field, (name, description) in GAUGES.items():
            yield GaugeMetricFamily(name, description, value=getattr(stats, field))
