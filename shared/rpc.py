"""gRPC plumbing every server shares: build (servicers, health, reflection,
error mapping, optional bearer-token auth and TLS) apart from serve (start,
wait, drain on SIGINT/SIGTERM).

Servicers raise the typed errors of `shared.errors`; `ErrorMapping` turns them
into status codes with their message (cut to MAX_DETAILS characters: it travels
in a header, which clients refuse over 8 KiB). Anything else is INTERNAL,
logged with the method name.
"""

import asyncio
import hmac
import inspect
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from .errors import BadState, DbrxServeError, InvalidInput, cut
from .metrics import RpcMetrics, serve_metrics
from .status import ERROR_OF_STATUS, STATUS_OF_ERROR, status_of, typed_error  # noqa: F401 (re-exported)

log = logging.getLogger("dbrx_serve.rpc")

OPEN_SERVICES = (health.SERVICE_NAME, reflection.SERVICE_NAME)  # reachable without a token
MAX_DETAILS = 1000  # characters of a status message; values in it are already cut (errors.shown)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    auth_token: str | None = None  # clients send "authorization: Bearer <token>"
    tls_cert: str | None = None    # PEM files; both or neither
    tls_key: str | None = None
    grace_seconds: float = 10.0
    max_message_mb: int = 64
    metrics_port: int | None = None  # Prometheus /metrics on this port (0: a free one); None: not served

    def __post_init__(self):
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInput("TLS needs both --tls_cert and --tls_key")
        for name in ("port", "metrics_port"):
            if not 0 <= (getattr(self, name) or 0) <= 65535:
                raise InvalidInput(f"--{name} {getattr(self, name)} is outside 0..65535")


@dataclass(frozen=True)
class Servicer:
    """One service to register: the generated `add_XServicer_to_server` and its full name."""

    add_to_server: Callable[[Any, grpc.aio.Server], None]
    implementation: Any
    name: str  # e.g. "dbrx.serve.v1.TokenizerService"


async def called(call):
    """Await an asyncio client call; its failure raised as the typed error of its status."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        raise typed_error(error) from None


async def _abort_for(error: Exception, context, method: str):
    code, message = status_of(error), str(error)
    if code is None:
        log.exception("%s failed", method)
        code, message = grpc.StatusCode.INTERNAL, f"{method}: internal error: {type(error).__name__}: {error}"
    await context.abort(code, cut(message, MAX_DETAILS))


class Unparsable(NamedTuple):
    """What a request deserializer hands on instead of raising (e.g. a string that
    is not valid UTF-8), so the call ends INVALID_ARGUMENT rather than UNKNOWN."""

    error: str


def _tolerant(deserializer):
    def parse(data: bytes):
        try:
            return deserializer(data)
        except DecodeError as error:
            return Unparsable(str(error))
    return parse


def _refuse_unparsable(request, method: str) -> None:
    if isinstance(request, Unparsable):
        raise InvalidInput(f"{method}: the request does not parse ({request.error}); strings must be valid UTF-8")


def _wrap(behavior, method: str, streaming_response: bool):
    if streaming_response and inspect.isasyncgenfunction(behavior):
        async def stream(request, context):
            try:
                _refuse_unparsable(request, method)
                async for item in behavior(request, context):
                    yield item
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as error:
                await _abort_for(error, context, method)
        return stream

    async def unary(request, context):  # also a streaming handler that writes with context.write (health Watch)
        try:
            _refuse_unparsable(request, method)
            return await behavior(request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as error:
            await _abort_for(error, context, method)
    return unary


class ErrorMapping(grpc.aio.ServerInterceptor):
    """Typed domain errors and unparsable requests -> status codes, one place per
    server (unary requests)."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                _wrap(handler.unary_stream, details.method, True),
                _tolerant(handler.request_deserializer), handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(
            _wrap(handler.unary_unary, details.method, False),
            _tolerant(handler.request_deserializer), handler.response_serializer)


class BearerAuth(grpc.aio.ServerInterceptor):
    """Refuses calls without `authorization: Bearer <token>` (health and reflection stay open)."""

    def __init__(self, token: str):
        self.expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        service = details.method.lstrip("/").split("/")[0]
        metadata = dict(details.invocation_metadata or ())
        given = str(metadata.get("authorization", "")).encode()
        if service in OPEN_SERVICES or hmac.compare_digest(given, self.expected):
            return await continuation(details)
        return _refuse(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token: "
                       "send metadata 'authorization: Bearer <token>'")


def _refuse(code: grpc.StatusCode, message: str):
    async def refuse(request, context):
        await context.abort(code, message)
    return grpc.unary_unary_rpc_method_handler(refuse)


def build_server(servicers: Iterable[Servicer], config: ServerConfig,
                 registry: CollectorRegistry | None = None) -> tuple[grpc.aio.Server, int]:
    """Register the servicers, health (SERVING for each) and reflection; bind the port. Every call
    is counted and timed in `registry` (server.registry), served on config.metrics_port by `start`."""
    servicers = list(servicers)
    registry = registry if registry is not None else CollectorRegistry()
    auth = [BearerAuth(config.auth_token)] if config.auth_token else []
    size = config.max_message_mb * 1024 * 1024
    server = grpc.aio.server(interceptors=[RpcMetrics(registry), *auth, ErrorMapping()], options=[
        ("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for s in servicers:
        s.add_to_server(s.implementation, server)
    names = [s.name for s in servicers]
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = _bind(server, config)
    server.health = health_servicer  # set SERVING once started (see serve/start)
    server.service_names = names
    server.registry, server.config, server.metrics_http = registry, config, None
    return server, port


def _bind(server: grpc.aio.Server, config: ServerConfig) -> int:
    address = f"{config.host}:{config.port}"
    if config.tls_cert:
        key, cert = Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes()
        port = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise BadState(f"cannot bind {address}: is the port in use?")
    return port


async def set_health(server: grpc.aio.Server, status: int) -> None:
    """The same health status (health_pb2.HealthCheckResponse.SERVING, NOT_SERVING) for every service."""
    for name in ["", *server.service_names]:
        await server.health.set(name, status)


async def start(server: grpc.aio.Server, serving: bool = True) -> None:
    """Listen; health SERVING, or NOT_SERVING for a server that gets ready later (inference)."""
    await set_health(server, health_pb2.HealthCheckResponse.SERVING if serving else
                     health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    start_metrics(server)


def start_metrics(server: grpc.aio.Server) -> None:
    """Serve server.registry on the configured metrics port, if any, and say where."""
    config = server.config
    if config.metrics_port is not None and server.metrics_http is None:
        try:
            server.metrics_http = serve_metrics(server.registry, config.host, config.metrics_port)
        except OSError as error:
            raise BadState(f"cannot bind the metrics port {config.host}:{config.metrics_port} "
                           f"({error.strerror}): is it in use?") from None
        print(f"metrics on http://{config.host}:{server.metrics_http.server_port}/metrics", flush=True)


def stop_metrics(server: grpc.aio.Server) -> None:
    if getattr(server, "metrics_http", None) is not None:
        server.metrics_http.shutdown()
        server.metrics_http.server_close()
        server.metrics_http = None


def stop_signal() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM."""
    stop, loop = asyncio.Event(), asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def drain(server: grpc.aio.Server, grace_seconds: float) -> None:
    """Health NOT_SERVING, no new calls, in-flight ones given the grace period, then cancelled."""
    await server.health.enter_graceful_shutdown()
    await server.stop(grace_seconds)
    stop_metrics(server)


async def serve(server: grpc.aio.Server, port: int, config: ServerConfig, on_stop=None) -> None:
    """Start, print the address, wait for SIGINT/SIGTERM, then drain in-flight calls."""
    await start(server)
    print(f"listening on {config.host}:{port}", flush=True)
    await stop_signal().wait()
    await drain(server, config.grace_seconds)
    if on_stop is not None:
        await on_stop()


def run_server(prog: str, serving: Callable[[], Any]) -> int:
    """A server command's main: run the coroutine `serving()` makes until it returns (after SIGINT
    or SIGTERM), 0; a DbrxServeError (a bad setting, a port in use) printed as `PROG: message`, 2."""
    try:
        asyncio.run(serving())
    except DbrxServeError as error:
        print(f"{prog}: {error}", file=sys.stderr, flush=True)
        return 2
    return 0


def channel(target: str, auth_token: str | None = None, tls_ca: str | None = None,
            options: Iterable[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """A client channel; with a token every call carries it. `options`: gRPC channel arguments."""
    options = list(options)
    if tls_ca is None and auth_token is None:
        return grpc.aio.insecure_channel(target, options)
    creds = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes() if tls_ca else None)
    if auth_token is not None:
        token = grpc.access_token_call_credentials(auth_token)
        creds = grpc.composite_channel_credentials(creds, token) if tls_ca else None
    if creds is None:  # a token over plaintext: only for localhost tests and trusted networks
        return grpc.aio.insecure_channel(target, options, interceptors=[_TokenInterceptor(auth_token)])
    return grpc.aio.secure_channel(target, creds, options)


class _TokenInterceptor(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str):
        self.metadata = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        metadata = list(details.metadata or []) + [self.metadata]
        return details._replace(metadata=metadata)

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._with_token(details), request)

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._with_token(details), request)
