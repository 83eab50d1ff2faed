"""gRPC plumbing every server shares: build (servicers, health, reflection v1 and
v1alpha, error mapping, bearer-token auth, TLS and mutual TLS, a message-size
limit) apart from serve (start, wait, drain on SIGINT/SIGTERM); the server flags
every `dbrx serve STAGE` takes.

Auth is on by default beyond loopback: a server whose --host is not a loopback
address refuses to start without --auth_token (or --tls_client_ca) unless
--insecure says so, and then logs a warning.

Servicers raise the typed errors of `shared.errors`; `ErrorMapping` turns them
into status codes with their message (cut to MAX_DETAILS characters: it travels
in a header, which clients refuse over 8 KiB). Anything else is INTERNAL,
logged with the method name.
"""

import argparse
import asyncio
import hmac
import inspect
import ipaddress
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from dbrx_serve.client.connection import tls_credentials

from .errors import BadState, DbrxServeError, InvalidInput, cut
from .metrics import RpcMetrics, serve_metrics
from .status import ERROR_OF_STATUS, STATUS_OF_ERROR, status_of, typed_error  # noqa: F401 (re-exported)

log = logging.getLogger("dbrx_serve.rpc")

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
OPEN_SERVICES = (health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1)  # reachable without a token
MAX_DETAILS = 1000  # characters of a status message; values in it are already cut (errors.shown)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    auth_token: str | None = None  # clients send "authorization: Bearer <token>"
    tls_cert: str | None = None    # PEM files; both or neither
    tls_key: str | None = None
    tls_client_ca: str | None = None  # mutual TLS: clients must show a certificate this CA (PEM) signed
    insecure: bool = False  # a host beyond loopback without auth_token or tls_client_ca: allowed, with a warning
    grace_seconds: float = 10.0
    max_message_mb: int = 64  # each way; a larger request is RESOURCE_EXHAUSTED
    metrics_port: int | None = None  # Prometheus /metrics on this port (0: a free one); None: not served

    def __post_init__(self):
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInput("TLS needs both --tls_cert and --tls_key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise InvalidInput("--tls_client_ca (mutual TLS) needs the server's own --tls_cert and --tls_key")
        if self.auth_token == "":
            raise InvalidInput("--auth_token must not be empty")
        for name in ("port", "metrics_port"):
            if not 0 <= (getattr(self, name) or 0) <= 65535:
                raise InvalidInput(f"--{name} {getattr(self, name)} is outside 0..65535")
        if not 1 <= self.max_message_mb <= 2047:  # gRPC's limits are int32 bytes
            raise InvalidInput(f"max_message_mb must be in 1..2047, got {self.max_message_mb}")
        open_to_network(self.host, self.auth_token or self.tls_client_ca, self.insecure,
                        "--auth_token TOKEN (or --tls_client_ca PEM)")


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only: localhost, 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name, "" or "0.0.0.0"-like wildcards are not loopback
        return False


def open_to_network(host: str, secret: str | None, insecure: bool, secret_flag: str) -> bool:
    """True when a server on `host` answers anyone on the network: beyond loopback with no
    secret, which only --insecure allows (InvalidInput without it, saying what to pass)."""
    if secret or is_loopback(host):
        return False
    if not insecure:
        raise InvalidInput(f"--host {host} is reachable from other machines, and without authentication anyone "
                           f"who reaches it could call it: pass {secret_flag}, or --insecure to serve without "
                           "authentication on a network you trust")
    return True


def warn_if_open(host: str, secret: str | None, insecure: bool) -> None:
    """The warning --insecure earns on a host beyond loopback (nothing on loopback or with a secret);
    call it on a configuration already checked (ServerConfig, GatewayConfig)."""
    if open_to_network(host, secret, insecure, "a secret"):
        log.warning("--insecure: listening on %s without authentication; anyone who reaches it can call it", host)


def add_server_flags(parser: argparse.ArgumentParser, default_port: int) -> None:
    """The flags every gRPC server of `dbrx serve STAGE` takes (docs/api.md, "What every server does")."""
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on; one beyond loopback "
                        "needs --auth_token or --tls_client_ca, or --insecure")
    parser.add_argument("--port", type=int, default=default_port, help="0 picks a free port")
    parser.add_argument("--auth_token", default=None, help="require 'authorization: Bearer <token>'")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a --host beyond loopback without authentication (logs a warning)")
    parser.add_argument("--tls_cert", default=None, help="the server's certificate (PEM), with --tls_key")
    parser.add_argument("--tls_key", default=None, help="the server's private key (PEM)")
    parser.add_argument("--tls_client_ca", default=None,
                        help="mutual TLS: require client certificates signed by this CA (PEM)")
    parser.add_argument("--metrics_port", type=int, default=None, help="serve Prometheus /metrics here (0: a free port)")


def server_config(args: argparse.Namespace, **more: Any) -> ServerConfig:
    """The ServerConfig of add_server_flags' flags (`more`: grace_seconds, ...)."""
    return ServerConfig(host=args.host, port=args.port, auth_token=args.auth_token, tls_cert=args.tls_cert,
                        tls_key=args.tls_key, tls_client_ca=args.tls_client_ca, insecure=args.insecure,
                        metrics_port=args.metrics_port, **more)


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
    warn_if_open(config.host, config.auth_token or config.tls_client_ca, config.insecure)
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
    add_reflection([*names, health.SERVICE_NAME, *REFLECTION_SERVICES], server)
    port = _bind(server, config)
    server.health = health_servicer  # set SERVING once started (see serve/start)
    server.service_names = names
    server.registry, server.config, server.metrics_http = registry, config, None
    return server, port


REFLECTION_SERVICES = (reflection.SERVICE_NAME, REFLECTION_V1)


def add_reflection(names: list[str], server: grpc.aio.Server) -> None:
    """Server reflection as grpc.reflection.v1alpha and v1. grpcio-reflection serves only
    v1alpha; v1 (grpc/reflection/v1/reflection.proto) is the same messages, field for field,
    under a new package, so one servicer answers both (grpcurl and Postman ask v1 first)."""
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo, request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(REFLECTION_V1,
                                                                          {"ServerReflectionInfo": v1})])


def _bind(server: grpc.aio.Server, config: ServerConfig) -> int:
    address = f"{config.host}:{config.port}"
    if config.tls_cert:
        port = server.add_secure_port(address, server_credentials(config))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise BadState(f"cannot bind {address}: is the port in use?")
    return port


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials:
    """TLS with the server's certificate; with tls_client_ca, clients must show one that CA signed."""
    pair = (read_pem(config.tls_key, "--tls_key"), read_pem(config.tls_cert, "--tls_cert"))
    if config.tls_client_ca is None:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials([pair], root_certificates=read_pem(config.tls_client_ca, "--tls_client_ca"),
                                       require_client_auth=True)


def read_pem(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise InvalidInput(f"{flag} {path}: cannot read it ({error.strerror})") from None


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
            options: Iterable[tuple[str, Any]] = (), tls_client_cert: str | None = None,
            tls_client_key: str | None = None) -> grpc.aio.Channel:
    """A client channel; with a token every call carries it. TLS when given the CA of the server's
    certificate (tls_ca) or a client certificate and key (mutual TLS). `options`: gRPC channel
    arguments. A token over plaintext is for localhost and trusted networks only."""
    options = list(options)
    interceptors = [_TokenInterceptor(auth_token)] if auth_token is not None else []
    credentials = tls_credentials(tls_ca, False, tls_client_cert, tls_client_key)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options, interceptors=interceptors)
    return grpc.aio.secure_channel(target, credentials, options, interceptors=interceptors)


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
