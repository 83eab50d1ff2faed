"""InferenceService over the engine: check the request, convert, one call
into the engine, convert back.

Tokenizing and chat rendering run in a worker thread (never on the event
loop, never on the engine's stepping thread). A call's deadline travels to the
engine, which ends the request once it passes, before its prefill if it is
still waiting; a cancelled call (client cancel, disconnect, deadline) aborts
its request, which frees its KV blocks before the next step. Every request's
latency goes to the shared inference histograms (shared/metrics.py), its tokens
and finish reason to the service's counters (metrics.py); log lines of a call
carry its request id (shared/logs.py)."""

import asyncio
import time
from typing import AsyncIterator

from dbrx_serve.shared.errors import DeadlineExceeded
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2 as pb
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2_grpc as pb_grpc
from dbrx_serve.shared.logs import set_request_id
from dbrx_serve.shared.metrics import InferenceMetrics

from . import convert_pb
from .host import EngineHost
from .metrics import TokenCounts
from .outputs import StepOutput
from .stop import FinishReason


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(self, host: EngineHost, metrics: InferenceMetrics | None = None):
        self.host = host
        self.metrics = metrics if metrics is not None else InferenceMetrics()
        self.counts = TokenCounts(self.metrics.registry)

    async def Generate(self, request: pb.GenerateRequest, context) -> pb.GenerateResponse:
        ids, outputs = await self.start(request, context)
        return convert_pb.generate_response([output async for output in outputs], len(ids))

    async def GenerateStream(self, request: pb.GenerateRequest, context) -> AsyncIterator[pb.GenerateStreamResponse]:
        ids, outputs = await self.start(request, context)
        num_tokens = 0
        async for output in outputs:
            num_tokens += len(output.token_ids)
            last = output.finish_reason is not None
            yield convert_pb.stream_response(output, convert_pb.usage_to_pb(len(ids), num_tokens) if last else None)

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context) -> pb.ModelInfo:
        return self.host.info

    async def start(self, request: pb.GenerateRequest, context) -> tuple[list[int], AsyncIterator[StepOutput]]:
        started = time.perf_counter()
        set_request_id(request.request_id)
        engine = self.host.ready
        call = convert_pb.call_from_pb(request, self.host.model_info.max_input_len)
        ids = await asyncio.to_thread(self.host.prompts.ids, call.prompt)
        outputs = engine.stream(ids, call.params, call.request_id, deadline_of(context))
        return ids, until_deadline(self.metrics.observed(self.counts.counted(len(ids), outputs), started))


async def until_deadline(outputs: AsyncIterator[StepOutput]) -> AsyncIterator[StepOutput]:
    """A request its deadline ended makes the call end DEADLINE_EXCEEDED, as the client's own deadline
    does: never an OK answer that raced it (the server notices the same instant as the client)."""
    async for output in outputs:
        if output.finish_reason is FinishReason.DEADLINE:
            raise DeadlineExceeded("the call's deadline passed before its request finished")
        yield output


def deadline_of(context) -> float | None:
    """The call's deadline on time.monotonic()'s clock, or None."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining
