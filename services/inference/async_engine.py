"""The engine for asyncio callers (the gRPC service): `stream(prompt, params)`
yields a request's step outputs as they come.

One thread owns the engine and steps it while any request is unfinished;
the event loop never touches the engine and never waits on a step. Adds,
aborts and stats reach that thread as calls in its inbox, run between two
steps (which is when a continuous batch can take a new request anyway).
Leaving a stream early (a cancelled RPC, `break`) aborts its request, which
frees its KV blocks before the next step.
"""

import asyncio
import concurrent.futures
import queue
import threading
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from .engine import Engine
from .outputs import EngineStats, StepOutput
from .params import SamplingParams


@dataclass
class _Listener:
    """Where one request's outputs go: a queue owned by the caller's event loop."""
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue

    def send(self, item: StepOutput | Exception) -> bool:
        try:
            self.loop.call_soon_threadsafe(self.outputs.put_nowait, item)
            return True
        except RuntimeError:  # the caller's loop is closed: nobody is listening
            return False


class AsyncEngine:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.listeners: dict[str, _Listener] = {}  # touched only by the stepping thread
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="engine-steps", daemon=True)
        self.thread.start()

    async def stream(self, prompt: str | list[int], params: SamplingParams = SamplingParams(),
                     request_id: str | None = None) -> AsyncIterator[StepOutput]:
        listener = _Listener(asyncio.get_running_loop(), asyncio.Queue())
        request_id = await self._call(self._add, prompt, params, request_id, listener)
        finished = False
        try:
            while not finished:
                output = await listener.outputs.get()
                if isinstance(output, Exception):
                    raise output
                finished = output.finish_reason is not None
                yield output
        finally:
            if not finished:
                self._post(self._abort, request_id)

    async def abort(self, request_id: str) -> bool:
        return await self._call(self._abort, request_id)

    async def stats(self) -> EngineStats:
        return await self._call(self.engine.stats)

    def close(self) -> None:
        """Stop the stepping thread; open streams get an error rather than waiting forever."""
        self.closed = True
        self._post(lambda: None)  # wakes the thread if it waits for work
        self.thread.join()

    # --- on the caller's loop ---

    async def _call(self, fn: Callable, *args):
        if self.closed:
            raise RuntimeError("the engine is closed")
        return await asyncio.wrap_future(self._post(fn, *args))

    def _post(self, fn: Callable, *args) -> concurrent.futures.Future:
        future = concurrent.futures.Future()
        self.inbox.put((fn, args, future))
        return future

    # --- on the stepping thread ---

    def _add(self, prompt, params, request_id, listener: _Listener) -> str:
        request_id = self.engine.add_request(prompt, params, request_id)
        self.listeners[request_id] = listener
        return request_id

    def _abort(self, request_id: str) -> bool:
        self.listeners.pop(request_id, None)
        return self.engine.abort(request_id)

    def _run(self) -> None:
        while not self.closed:
            self._drain_inbox(wait=not self.engine.has_unfinished)
            if self.engine.has_unfinished and not self.closed:
                self._step()
        self._drain_inbox(wait=False)
        self._fail_all(RuntimeError("the engine was closed while this request ran"))

    def _drain_inbox(self, wait: bool) -> None:
        try:
            item = self.inbox.get(block=wait)
            while True:
                fn, args, future = item
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args))
                    except Exception as error:
                        future.set_exception(error)
                item = self.inbox.get_nowait()
        except queue.Empty:
            pass

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as error:  # every open stream raises it; the engine starts over empty
            self._fail_all(error)
            return
        for output in outputs:
            listener = self.listeners.get(output.request_id)
            if output.finish_reason is not None:
                self.listeners.pop(output.request_id, None)
            if listener is not None and not listener.send(output):
                self._abort(output.request_id)

    def _fail_all(self, error: Exception) -> None:
        for request_id in list(self.engine.sequences):
            self.engine.abort(request_id)
        for listener in self.listeners.values():
            listener.send(error)
        self.listeners.clear()
