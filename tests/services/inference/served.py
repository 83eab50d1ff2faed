"""A real inference server for tests: `build_server` on port 0, run by its own
event loop in a thread (tests/serving.py), its engine loaded and warmed up
(health SERVING) before the test talks to it over real channels; or
`dbrx serve inference` as a process of its own, for tests that kill it.
`paused` holds the engine's steps (calls such as adds, aborts and stats
still run), so a test can act while no step runs instead of racing one."""

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dbrx_serve.cli.launcher import Child, Launcher
from dbrx_serve.services.inference import server as inference
from dbrx_serve.services.inference.config import InferenceServiceConfig
from dbrx_serve.services.inference.engine import Engine
from dbrx_serve.services.inference.host import EngineHost
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2 as pb
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2_grpc as pb_grpc

from tests.serving import served_in_thread

WAIT = 60
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Served:
    address: str
    host: EngineHost

    @property
    def engine(self) -> Engine:
        return self.host.engine.engine

    async def stats(self):
        """The engine's stats, asked on its stepping thread (from any event loop)."""
        return await self.host.engine.stats()


@contextlib.contextmanager
def inference_server(engine_dir, **options):
    hosts = []

    def build():
        server, port = inference.build_server(InferenceServiceConfig(str(engine_dir), device="cpu", **options))
        hosts.append(server.host)
        return server, port
    with served_in_thread(build, start=inference.start, on_stop=lambda server: server.host.close()) as address:
        wait_for_health(address, SERVING)
        yield Served(address, hosts[0])


@contextlib.contextmanager
def inference_process(engine_dir, *flags) -> Iterator[Child]:
    """`dbrx serve inference` on free ports (its metrics too), SERVING; yields the child (address,
    metrics URL, process), stopped at the end (SIGTERM, then SIGKILL) unless the test killed it."""
    with Launcher(quiet=True) as launcher:
        child = launcher.start("inference", "serve", "inference", "--engine_dir", engine_dir, "--port", 0,
                               "--device", "cpu", "--metrics_port", 0, *flags)
        wait_for_health(child.address, SERVING)
        yield child


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service=inference.SERVICE_NAME)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=WAIT).status


def wait_for_health(address: str, status: int) -> None:
    deadline = time.monotonic() + WAIT
    while health(address) != status:
        assert time.monotonic() < deadline, f"health never became {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}"
        time.sleep(0.02)


@contextlib.contextmanager
def paused(engine: Engine):
    """No step runs inside (each returns nothing at once); expiry, adds, aborts and stats still do."""
    engine.step = lambda: time.sleep(0.001) or []
    try:
        yield
    finally:
        del engine.step


def run(coroutine):
    """asyncio.run with a deadline: a regression that leaves a caller waiting fails, not hangs."""
    return asyncio.run(asyncio.wait_for(coroutine, WAIT))


def stub(channel) -> pb_grpc.InferenceServiceStub:
    return pb_grpc.InferenceServiceStub(channel)


def request(prompt, max_new_tokens: int = 12, **sampling) -> pb.GenerateRequest:
    """A greedy request (unless `sampling` says otherwise) for text or token ids."""
    sampling = pb.SamplingParams(max_new_tokens=max_new_tokens, **{"temperature": 0, **sampling})
    if isinstance(prompt, str):
        return pb.GenerateRequest(text=prompt, sampling=sampling)
    return pb.GenerateRequest(input_ids=prompt, sampling=sampling)


async def streamed(stub_, message: pb.GenerateRequest, **call) -> list[pb.GenerateStreamResponse]:
    return [response async for response in stub_.GenerateStream(message, **call)]
