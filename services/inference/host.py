"""The engine behind an inference server, and the health that follows it.

The server listens first, NOT_SERVING, so probes get an answer while a large
engine loads; `run` reads the engine in a worker thread, runs one warm-up
step, then turns health SERVING. Health goes NOT_SERVING again while the
server drains (SIGTERM) and as soon as the engine's stepping thread stops
(`run` then raises WorldLost if a rank of the engine's MPI world died).
A request that comes while the engine is loading, draining or stopped is
UNAVAILABLE, with the reason.
"""

import asyncio
import contextlib
import logging
import time

import grpc
import torch
from grpc_health.v1 import health_pb2

from dbrx_serve.shared import rpc
from dbrx_serve.shared.errors import EngineFailed, Unavailable
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2 as pb

from .async_engine import AsyncEngine
from .config import InferenceServiceConfig
from .convert_pb import model_info_to_pb
from .engine import Engine
from .prompt import PromptEncoder

log = logging.getLogger("dbrx_serve.inference")
DRAINING = "the server is shutting down: retry on another replica"
SHUT_DOWN = "the server shut down before this request finished: retry it on another replica"


def load_warm_engine(config: InferenceServiceConfig) -> tuple[Engine, pb.ModelInfo]:
    """The engine, after one warm-up step, and what GetModelInfo says of it (read here: it hashes the manifest)."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    engine = Engine.from_dir(config.engine_dir, device, verify_checksums=config.verify_checksums,
                             tokenizer_dir=config.tokenizer_dir, **config.runtime_limits)
    log.info("%s", engine.runner.memory.describe())
    engine.warm_up()
    return engine, model_info_to_pb(engine)


class EngineHost:
    def __init__(self, config: InferenceServiceConfig):
        self.config = config
        self.engine: AsyncEngine | None = None
        self.prompts: PromptEncoder | None = None
        self.model_info: pb.ModelInfo | None = None
        self.not_ready = "the engine is still loading: retry once health says SERVING"
        self.running: asyncio.Task | None = None

    @property
    def ready(self) -> AsyncEngine:
        """The running engine, or Unavailable saying why there is none."""
        if self.engine is None or self.engine.stopped.done() or self.not_ready == DRAINING:
            raise Unavailable(self.not_ready)
        return self.engine

    @property
    def info(self) -> pb.ModelInfo:
        if self.model_info is None:
            raise Unavailable(self.not_ready)
        return self.model_info

    def start(self, server: grpc.aio.Server) -> asyncio.Task:
        """`run` in the background; the task ends when the engine stops or fails to load."""
        self.running = asyncio.ensure_future(self.run(server))
        return self.running

    async def run(self, server: grpc.aio.Server) -> None:
        """Load and warm up the engine off the event loop, serve (health SERVING) until its
        stepping thread stops (health NOT_SERVING)."""
        engine, self.model_info = await asyncio.to_thread(load_warm_engine, self.config)
        self.prompts = engine.prompts
        self.engine = AsyncEngine(engine)
        await rpc.set_health(server, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s on %s", self.config.engine_dir, engine.runner.device)
        reason = await asyncio.wrap_future(self.engine.stopped)
        if self.not_ready != DRAINING:
            self.not_ready = f"the engine has stopped ({reason}): this server needs a restart"
            log.error("the engine has stopped (%s): health is NOT_SERVING", reason)
        await rpc.set_health(server, health_pb2.HealthCheckResponse.NOT_SERVING)
        engine.executor.check()  # a lost MPI world (WorldLost): the server exits, and the world with it

    def drain(self) -> None:
        """Refuse new requests from now on; those in flight go on."""
        self.not_ready = DRAINING

    async def wind_down(self, grace_seconds: float) -> None:
        """Let the requests in flight finish for up to the grace period, then cancel the rest
        (their calls end CANCELLED)."""
        deadline = time.monotonic() + grace_seconds
        with contextlib.suppress(EngineFailed):  # an engine that stopped has nothing in flight
            while self.engine is not None and not await self.idle() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self.engine is not None:
                await self.engine.cancel_all(SHUT_DOWN)

    async def idle(self) -> bool:
        stats = await self.engine.stats()
        return stats.running + stats.waiting == 0

    async def close(self) -> None:
        """Stop the engine (open streams end UNAVAILABLE); call after the server has drained."""
        self.drain()
        if self.engine is not None:
            await asyncio.to_thread(self.engine.close)
        elif self.running is not None:
            self.running.cancel()  # still loading: stop waiting for it (the thread finishes on its own)
        if self.running is not None:
            await asyncio.gather(self.running, return_exceptions=True)
