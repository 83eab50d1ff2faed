"""The inference services behind the gateway: each one's health followed by
a gRPC health watch, and each request sent to the serving one with the
fewest requests outstanding (ties taken in turn).

A target whose health is NOT_SERVING (loading, draining, its engine stopped)
or that cannot be reached is skipped until its watch says SERVING again; the
watch is retried every RETRY_SECONDS, and the channel reconnects within
MAX_RECONNECT_MS, so a restarted service is back in use within about a
second. Its ModelInfo is read when it first serves (the engine's limits)."""

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dbrx_serve.shared import rpc
from dbrx_serve.shared.errors import Unavailable
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2 as pb
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger("dbrx_serve.gateway")
SERVICE_NAME = "dbrx.serve.v1.InferenceService"
SERVING = health_pb2.HealthCheckResponse.SERVING
RETRY_SECONDS = 0.5
MAX_RECONNECT_MS = 1000
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                   ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_MS),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES))
NONE_SERVING = "no inference service is serving: retry once /health answers 200"


@dataclass(eq=False)
class Target:
    address: str
    channel: grpc.aio.Channel
    serving: bool = False
    outstanding: int = 0
    info: pb.ModelInfo | None = None
    stub: pb_grpc.InferenceServiceStub = field(init=False)

    def __post_init__(self):
        self.stub = pb_grpc.InferenceServiceStub(self.channel)


def least_outstanding(targets: list[Target], turn: int) -> Target | None:
    """The serving target with the fewest outstanding requests; ties go to the first from `turn` on."""
    rotated = targets[turn % len(targets):] + targets[:turn % len(targets)]
    return min((t for t in rotated if t.serving), key=lambda t: t.outstanding, default=None)


def plaintext(address: str) -> grpc.aio.Channel:
    return rpc.channel(address, options=CHANNEL_OPTIONS)


class Balancer:
    def __init__(self, addresses: tuple[str, ...], connect: Callable[[str], grpc.aio.Channel] = plaintext):
        """`connect(address)`: a channel to one target (GatewayConfig.channel: token, TLS)."""
        self.addresses, self.connect = addresses, connect
        self.targets: list[Target] = []
        self.watches: list[asyncio.Task] = []
        self.turn = 0

    async def start(self) -> None:
        """Open a channel per target and start following its health (on the running loop)."""
        self.targets = [Target(a, self.connect(a)) for a in self.addresses]
        self.watches = [asyncio.create_task(self.follow(t)) for t in self.targets]

    async def close(self) -> None:
        for watch in self.watches:
            watch.cancel()
        await asyncio.gather(*self.watches, return_exceptions=True)
        await asyncio.gather(*(t.channel.close() for t in self.targets))

    @property
    def serving(self) -> bool:
        return any(t.serving for t in self.targets)

    @property
    def model_info(self) -> pb.ModelInfo | None:
        """The engine's description from the first target that has served (all serve one model)."""
        return next((t.info for t in self.targets if t.info is not None), None)

    def acquire(self) -> Target:
        """A target for one request, counted as outstanding until `release`d."""
        target = least_outstanding(self.targets, self.turn)
        if target is None:
            raise Unavailable(NONE_SERVING)
        self.turn += 1
        target.outstanding += 1
        return target

    @staticmethod
    def release(target: Target) -> None:
        target.outstanding -= 1

    async def follow(self, target: Target) -> None:
        """Watch the target's health for ever; a broken watch means not serving, then a retry."""
        while True:
            try:
                async for reply in health_pb2_grpc.HealthStub(target.channel).Watch(
                        health_pb2.HealthCheckRequest(service=SERVICE_NAME)):
                    await self.mark(target, reply.status == SERVING)
            except grpc.aio.AioRpcError as error:
                log.debug("health watch of %s: %s", target.address, error.code().name)
            if target.serving:
                log.warning("inference service %s is unreachable: skipped until it serves", target.address)
            target.serving = False
            await asyncio.sleep(RETRY_SECONDS)

    async def mark(self, target: Target, serving: bool) -> None:
        if serving and target.info is None:
            target.info = await target.stub.GetModelInfo(pb.GetModelInfoRequest())
        if serving != target.serving:
            log.info("inference service %s is %s", target.address, "serving" if serving else "not serving")
        target.serving = serving
