"""Prometheus metrics that more than one server records: every gRPC call by
method and status with its latency (`RpcMetrics`, an interceptor every gRPC
server of shared/rpc.py has), and the latency of inference requests, as the
OpenAI-compatible gateway sees them and as the InferenceService sees them
(the same three histograms, so dashboards read either).

Names: `dbrx:` then vLLM's name where vLLM has one (`dbrx:time_to_first_token_seconds`
as `vllm:time_to_first_token_seconds`), one scheme across every server
(docs/api.md, "Metrics"). `serve_metrics` serves a registry on its own port.

    metrics = InferenceMetrics(registry)
    async for output in metrics.observed(stream):   # anything with .token_ids
        ...

Time to first token runs from the request's start to its first message with
a token; time per output token is the gap between two messages with tokens
over the tokens the later one brings; end-to-end latency is observed when a
stream ends normally (not when it is cancelled or fails). Each server keeps
its own registry (a process may run several, as the tests do)."""

import inspect
import logging
import time
from typing import AsyncIterator, TypeVar

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger("dbrx_serve.metrics")

T = TypeVar("T")
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0)  # vLLM's
TPOT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0)
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
JOB_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0)


class InferenceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.time_to_first_token = Histogram(
            "dbrx:time_to_first_token_seconds", "Time from a request's start to its first token.",
            buckets=TTFT_BUCKETS, registry=self.registry)
        self.time_per_output_token = Histogram(
            "dbrx:time_per_output_token_seconds", "Time per output token after the first.",
            buckets=TPOT_BUCKETS, registry=self.registry)
        self.e2e_request_latency = Histogram(
            "dbrx:e2e_request_latency_seconds", "Time from a request's start to its last token.",
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


def serve_metrics(registry: CollectorRegistry, host: str, port: int):
    """An HTTP server in a thread answering GET /metrics with `registry` (port 0: a free one);
    returns it (`.server_port`, `.shutdown()`)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Every call counted by service, method and final status code, and timed (a stream: until
    it ends). The outermost interceptor, so refusals (auth) and mapped errors count too."""

    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter("dbrx:grpc_requests", "gRPC calls by service, method and status code.",
                                ["service", "method", "code"], registry=registry)
        self.latency = Histogram("dbrx:grpc_request_duration_seconds", "gRPC call latency by service and method.",
                                 ["service", "method"], buckets=RPC_BUCKETS, registry=registry)

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        service, _, method = details.method.lstrip("/").partition("/")
        timed = _timed(self, handler.unary_stream or handler.unary_unary, service, method)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(timed, handler.request_deserializer,
                                                        handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(timed, handler.request_deserializer, handler.response_serializer)

    def record(self, service: str, method: str, code: str, started: float) -> None:
        self.requests.labels(service, method, code).inc()
        self.latency.labels(service, method).observe(time.perf_counter() - started)


def _code_of(context, error: BaseException | None) -> str:
    """The status a call ended with: what it aborted with, CANCELLED, UNKNOWN for a raise, else OK."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if error is None:
        return "OK"
    return "CANCELLED" if isinstance(error, BaseException) and not isinstance(error, Exception) else "UNKNOWN"


def _timed(metrics: RpcMetrics, behavior, service: str, method: str):
    if inspect.isasyncgenfunction(behavior):
        async def stream(request, context):
            started, error = time.perf_counter(), None
            try:
                async for item in behavior(request, context):
                    yield item
            except BaseException as raised:
                error = raised
                raise
            finally:
                metrics.record(service, method, _code_of(context, error), started)
        return stream

    async def unary(request, context):
        started, error = time.perf_counter(), None
        try:
            return await behavior(request, context)
        except BaseException as raised:
            error = raised
            raise
        finally:
            metrics.record(service, method, _code_of(context, error), started)
    return unary


class JobMetrics:
    """How long job attempts take, by kind and by the state the attempt left the job in
    (SUCCEEDED, FAILED, CANCELLED, or QUEUED when it will be retried); recorded by the workers."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.duration = Histogram("dbrx:job_duration_seconds", "Job attempts' duration by kind and outcome.",
                                  ["kind", "state"], buckets=JOB_BUCKETS, registry=self.registry)

    def observe(self, kind: str, state: str, seconds: float) -> None:
        self.duration.labels(kind, state).observe(seconds)


class JobCounts:
    """A collector: the job store's jobs of one kind per state, read at each scrape (so every
    replica reports the whole store, whichever host runs the workers)."""

    def __init__(self, count_by_state, kind: str, states: tuple[str, ...]):
        self.count_by_state, self.kind, self.states = count_by_state, kind, states

    def collect(self):
        family = GaugeMetricFamily("dbrx:jobs", "Jobs in the store by kind and state.", labels=["kind", "state"])
        try:
            counts = self.count_by_state(self.kind)
        except Exception:  # a scrape must not fail because the database hiccups
            log.exception("counting %s jobs failed", self.kind)
            return
        for state in self.states:
            family.add_metric([self.kind, state], counts.get(state, 0))
        yield family
