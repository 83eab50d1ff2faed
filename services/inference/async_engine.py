"""The engine for asyncio callers (the gRPC service): `stream(prompt, params)`
yields a request's step outputs as they come. One background task steps the
engine in a worker thread while any request is unfinished; a lock keeps
add / abort / step apart. Leaving a stream early (a cancelled RPC, `break`)
aborts its request, which frees its KV blocks at once."""

import asyncio
import threading
from typing import AsyncIterator

from .engine import Engine
from .outputs import StepOutput
from .params import SamplingParams


class AsyncEngine:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.lock = threading.Lock()
        self.queues: dict[str, asyncio.Queue] = {}
        self.loop_task: asyncio.Task | None = None

    async def stream(self, prompt: str | list[int], params: SamplingParams = SamplingParams(),
                     request_id: str | None = None) -> AsyncIterator[StepOutput]:
        with self.lock:
            request_id = self.engine.add_request(prompt, params, request_id)
        queue = self.queues[request_id] = asyncio.Queue()
        self.ensure_loop()
        finished = False
        try:
            while not finished:
                output = await queue.get()
                if isinstance(output, Exception):
                    raise output
                finished = output.finish_reason is not None
                yield output
        finally:
            self.queues.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> bool:
        with self.lock:
            return self.engine.abort(request_id)

    def stats(self):
        with self.lock:
            return self.engine.stats()

    def ensure_loop(self) -> None:
        if self.loop_task is None or self.loop_task.done():
            self.loop_task = asyncio.get_running_loop().create_task(self.run_loop())

    async def run_loop(self) -> None:
        try:
            while self.engine.has_unfinished:
                for output in await asyncio.to_thread(self.step):
                    if (queue := self.queues.get(output.request_id)) is not None:
                        queue.put_nowait(output)
        except Exception as error:  # every open stream raises it rather than waiting forever
            for queue in self.queues.values():
                queue.put_nowait(error)

    def step(self) -> list[StepOutput]:
        with self.lock:
            return self.engine.step()
