"""The engine for asyncio callers (the gRPC service): `stream(prompt, params)`
yields a request's step outputs as they come.

One thread owns the engine and steps it while any request is unfinished;
the event loop never touches the engine and never waits on a step. Adds,
aborts and stats reach that thread as calls in its inbox, run in order
between two steps (which is when a continuous batch can take a new request
anyway). Leaving a stream early (a cancelled RPC, `break`) aborts its
request, which frees its KV blocks before the next step; so does a passed
deadline, checked before every step. Whatever happens to the thread, no
caller is left waiting: a failed step, `close()` or a crash ends every open
stream with `EngineFailed` and refuses later calls, and `stopped` resolves
with the reason (the server's health follows it). So does the loss of a rank
of a multi-rank engine's MPI world (`WorldLost`), which wakes the thread even
when no request is running.
"""

import asyncio
import concurrent.futures
import logging
import queue
import threading
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from dbrx_serve.shared.errors import Cancelled, DbrxServeError, EngineFailed

from .engine import Engine
from .outputs import EngineStats, StepOutput
from .params import SamplingParams
from .prompt import Prompt
from .stop import FinishReason
from .world import WorldLost

log = logging.getLogger("dbrx_serve.inference")
__all__ = ["AsyncEngine", "EngineFailed"]


@dataclass(eq=False)
class _Listener:
    """Where one stream's outputs go: a queue owned by the caller's event loop."""
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue
    request_id: str | None = None  # set once the engine has taken the request

    def send(self, item: StepOutput | DbrxServeError) -> bool:
        """False when the caller's loop is closed: nobody listens any more."""
        try:
            self.loop.call_soon_threadsafe(self.outputs.put_nowait, item)
            return True
        except RuntimeError:
            return False


class AsyncEngine:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()  # (fn, args, future); None wakes the thread
        self.listeners: dict[str, _Listener] = {}  # touched only by the stepping thread
        self.lock = threading.Lock()  # "not closed, so post" is atomic with closing
        self.closed = False
        self.stopped: concurrent.futures.Future = concurrent.futures.Future()  # the reason, once stopped
        self.thread = threading.Thread(target=self._run, name="engine-steps", daemon=True)
        self.thread.start()

    async def stream(self, prompt: Prompt, params: SamplingParams = SamplingParams(),
                     request_id: str | None = None, deadline: float | None = None) -> AsyncIterator[StepOutput]:
        """A request's outputs; the last has a finish_reason. Bad input raises here (InvalidInput,
        CapacityExhausted) before any output; leaving early aborts the request. `deadline`:
        time.monotonic() after which the engine ends it (FinishReason.DEADLINE)."""
        listener = _Listener(asyncio.get_running_loop(), asyncio.Queue())
        added = self._post(self._add, prompt, params, request_id, deadline, listener)
        finished = False
        try:
            await asyncio.wrap_future(added)
            while not finished:
                output = await listener.outputs.get()
                if isinstance(output, DbrxServeError):  # EngineFailed, or Cancelled by cancel_all
                    raise output
                finished = output.finish_reason is not None
                yield output
        finally:
            if not finished:  # posted after the add, so it runs after it (or finds nothing)
                self._post(self._drop, listener)

    async def abort(self, request_id: str) -> bool:
        """Cancel a request; its stream ends with a CANCELLED output. False if unknown or done."""
        return await asyncio.wrap_future(self._post(self._abort, request_id))

    async def cancel_all(self, reason: str) -> int:
        """Abort every request; each open stream raises Cancelled(reason). Returns how many there were."""
        return await asyncio.wrap_future(self._post(self._cancel_all, reason))

    async def stats(self) -> EngineStats:
        return await asyncio.wrap_future(self._post(self.engine.stats))

    def stats_now(self, timeout: float) -> EngineStats:
        """The stats from any thread but the stepping one (a metrics scrape), waiting at most `timeout`."""
        return self._post(self.engine.stats).result(timeout)

    def close(self) -> None:
        """Stop the stepping thread after the step in progress (so call it from a thread,
        not the event loop); open streams raise EngineFailed, later calls are refused."""
        with self.lock:
            self.closed = True
        self.inbox.put(None)
        if threading.current_thread() is not self.thread:
            self.thread.join()

    # --- any thread ---

    def _post(self, fn: Callable, *args) -> concurrent.futures.Future:
        """Queue a call for the stepping thread; once closed, the future fails at once."""
        future = concurrent.futures.Future()
        with self.lock:
            if not self.closed:
                self.inbox.put((fn, args, future))
                return future
        future.set_exception(EngineFailed("the engine is closed"))
        return future

    # --- the stepping thread ---

    def _add(self, prompt, params, request_id, deadline, listener: _Listener) -> str:
        listener.request_id = self.engine.add_request(prompt, params, request_id, deadline)
        self.listeners[listener.request_id] = listener
        return listener.request_id

    def _drop(self, listener: _Listener) -> None:
        """A stream left early: abort its request, unless it ended already (or never began)."""
        if listener.request_id is not None and self.listeners.get(listener.request_id) is listener:
            del self.listeners[listener.request_id]
            self.engine.abort(listener.request_id)

    def _abort(self, request_id: str) -> bool:
        listener = self.listeners.pop(request_id, None)
        try:
            return self.engine.abort(request_id)
        finally:
            if listener is not None:
                listener.send(StepOutput(request_id, (), "", (), FinishReason.CANCELLED))

    def _cancel_all(self, reason: str) -> int:
        listeners, self.listeners = self.listeners, {}
        for request_id, listener in listeners.items():
            self.engine.abort(request_id)
            listener.send(Cancelled(reason))
        return len(listeners)

    def _run(self) -> None:
        reason, cause = "the engine was closed while this request ran", None
        try:
            self.engine.executor.on_lost(lambda: self.inbox.put(None))  # wake up, and stop at the check
            while not self.closed:
                self._run_calls(wait=not self.engine.has_unfinished)
                self.engine.executor.check()  # WorldLost once a rank has died: no step can run again
                if self.engine.has_unfinished and not self.closed:
                    self._step()
        except WorldLost as lost:
            reason, cause = str(lost), lost
        except BaseException as crash:
            log.exception("the engine's stepping thread failed")
            reason, cause = f"the engine stopped: {crash!r}", crash
        finally:
            with self.lock:
                self.closed = True
            self._refuse_calls(reason)
            self._fail_all(reason, cause)
            self.stopped.set_result(reason)

    def _run_calls(self, wait: bool) -> None:
        """Run every queued call (waiting for the first when there is nothing to step)."""
        for fn, args, future in self._take_calls(wait):
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except Exception as error:
                    future.set_exception(error)
                except BaseException as crash:  # the caller hears of it too, then the thread stops
                    future.set_exception(EngineFailed(f"the engine stopped: {crash!r}"))
                    raise

    def _take_calls(self, wait: bool):
        try:
            item = self.inbox.get(block=wait)
            while True:
                if item is not None:
                    yield item
                item = self.inbox.get_nowait()
        except queue.Empty:
            return

    def _refuse_calls(self, reason: str) -> None:
        for _, _, future in self._take_calls(wait=False):
            if future.set_running_or_notify_cancel():
                future.set_exception(EngineFailed(reason))

    def _step(self) -> None:
        try:
            outputs = self.engine.expire() + self.engine.step()
        except WorldLost:  # the thread stops: every open request ends with it
            raise
        except Exception as error:  # every open request ends with it; the engine starts over empty
            log.exception("an engine step failed")
            self._fail_all(f"an engine step failed: {error!r}", error)
            return
        for output in outputs:
            listener = self.listeners.get(output.request_id)
            if listener is None:
                continue
            if output.finish_reason is not None:
                del self.listeners[output.request_id]
            if not listener.send(output):
                self._drop(listener)

    def _fail_all(self, reason: str, cause: BaseException | None) -> None:
        """Abort every request and end every open stream, each with its own EngineFailed."""
        for request_id in list(self.engine.sequences):
            try:
                self.engine.abort(request_id)
            except Exception:  # keep going: every stream must still hear of the failure
                log.exception("aborting %s failed", request_id)
        for listener in self.listeners.values():
            failure = EngineFailed(reason)
            failure.__cause__ = cause
            listener.send(failure)
        self.listeners.clear()
