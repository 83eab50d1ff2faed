"""The gRPC side of a request: one GenerateStream per choice, each on the
target the balancer picks and counted there as outstanding until it closes.

Closing never waits (it cancels the call, which the inference service turns
into an abort that frees the request's KV blocks before its next step), so
it is safe in any `finally`, even one run by a cancelled task. Unary HTTP
requests read their streams whole; streamed ones read their first messages
before answering 200 (so a refused request is a proper error status), then
merge the rest as they come."""

import asyncio
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, TypeVar

import grpc
from starlette.requests import Request

from dbrx_serve.shared import rpc
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2 as pb
from dbrx_serve.shared.metrics import InferenceMetrics, RequestTimer

from .balancer import Balancer, Target
from .errors import ClientGone

T = TypeVar("T")


class ChoiceStream:
    def __init__(self, balancer: Balancer, request: pb.GenerateRequest, timer: RequestTimer):
        self.balancer, self.timer = balancer, timer
        self.target: Target | None = balancer.acquire()
        self.call = self.target.stub.GenerateStream(request)

    async def read(self) -> pb.GenerateStreamResponse | None:
        """The next message, or None once the stream has ended; a failed call as its typed error."""
        try:
            message = await self.call.read()
        except grpc.aio.AioRpcError as error:
            raise rpc.typed_error(error) from None
        if message is grpc.aio.EOF:
            self.timer.finish()
            return None
        self.timer.tokens(len(message.token_ids))
        return message

    def close(self) -> None:
        self.call.cancel()  # a no-op once the call has ended
        if self.target is not None:
            self.balancer.release(self.target)
            self.target = None


@dataclass
class Choice:
    """A whole choice read from its stream."""

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[float] = field(default_factory=list)
    last: pb.GenerateStreamResponse | None = None  # carries the finish reason and the usage

    def add(self, message: pb.GenerateStreamResponse) -> None:
        self.token_ids += message.token_ids
        self.text += message.text_delta
        self.logprobs += message.logprobs
        self.last = message


class Streams:
    """The choices of one HTTP request, open."""

    def __init__(self, balancer: Balancer, metrics: InferenceMetrics, requests, started: float):
        self.streams: list[ChoiceStream] = []
        try:
            for request in requests:
                self.streams.append(ChoiceStream(balancer, request, metrics.timer(started)))
        except BaseException:
            self.close()
            raise

    async def firsts(self) -> list[pb.GenerateStreamResponse | None]:
        """Each stream's first message (errors raised here: before any byte of the answer)."""
        return list(await asyncio.gather(*(s.read() for s in self.streams)))

    async def whole(self) -> list[Choice]:
        return list(await asyncio.gather(*(whole(s) for s in self.streams)))

    def merged(self, firsts: list) -> AsyncIterator[tuple[int, pb.GenerateStreamResponse]]:
        """(choice index, message) as they come, starting with the first messages already read."""
        return one(self.streams[0], firsts[0]) if len(self.streams) == 1 else many(self.streams, firsts)

    def close(self) -> None:
        for stream in self.streams:
            stream.close()


async def one(stream: ChoiceStream, first) -> AsyncIterator[tuple[int, pb.GenerateStreamResponse]]:
    message = first
    while message is not None:
        yield 0, message
        message = await stream.read()


async def many(streams: list[ChoiceStream], firsts: list) -> AsyncIterator[tuple[int, pb.GenerateStreamResponse]]:
    """Each stream read by a task of its own into one queue."""
    queue: asyncio.Queue = asyncio.Queue()
    pumps = [asyncio.create_task(pump(i, stream, first, queue))
             for i, (stream, first) in enumerate(zip(streams, firsts))]
    try:
        for _ in range(len(pumps)):
            while (item := await queue.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
    finally:
        for task in pumps:
            task.cancel()


async def whole(stream: ChoiceStream) -> Choice:
    choice = Choice()
    while (message := await stream.read()) is not None:
        choice.add(message)
    return choice


async def pump(index: int, stream: ChoiceStream, first, queue: asyncio.Queue) -> None:
    """Put (index, message) for each message from `first` on, then None; an error instead of the rest."""
    try:
        message = first
        while message is not None:
            queue.put_nowait((index, message))
            message = await stream.read()
    except Exception as error:
        queue.put_nowait(error)
        return
    queue.put_nowait(None)


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`, cancelled when the HTTP client disconnects first (ClientGone). The body must have
    been read: what `receive` gives after it is the disconnect."""
    task, gone = asyncio.ensure_future(work), asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
    if not task.done():
        raise ClientGone()
    return task.result()


async def disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
