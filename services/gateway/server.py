"""The gateway server: `build_app(config)` (app.py) served by uvicorn.

    dbrx serve openai --inference HOST:PORT [--inference HOST:PORT ...] [--tokenizer HOST:PORT]
                      [--host H] [--port 8000] [--api_key KEY] [--insecure] [--model_name dbrx]
                      [--max_request_mb 8] [--default_max_tokens 256] [--auth_token T] [--tls_ca PEM]
                      [--tls_client_cert PEM --tls_client_key PEM] [--grace_seconds S]

The port is bound before serving (so `--port 0` prints the one it got as
`listening on HOST:PORT`). On SIGINT/SIGTERM uvicorn stops accepting, lets
open requests finish for --grace_seconds, then closes the channels.
`serve_config` is the piece a launcher of several stages (`dbrx serve all`)
runs next to the gRPC servers."""

import argparse
import asyncio
import contextlib
import logging
import socket

import uvicorn

from dbrx_serve.shared import rpc
from dbrx_serve.shared.errors import DbrxServeError

from .app import build_app
from .config import GatewayConfig

DEFAULT_PORT = 8000


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inference", action="append", required=True, metavar="HOST:PORT",
                        help="an InferenceService (repeat for several: least outstanding requests wins)")
    parser.add_argument("--tokenizer", default=None, metavar="HOST:PORT",
                        help="a TokenizerService, for /tokenize, /detokenize, logprobs and stop_token_ids")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on; one beyond loopback "
                        "needs --api_key, or --insecure")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument("--api_key", default=None, help="require 'Authorization: Bearer <key>' on /v1 and "
                        "/tokenize, /detokenize")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a --host beyond loopback without --api_key (logs a warning)")
    parser.add_argument("--model_name", default=GatewayConfig.model_name, help="the model's name in the API")
    parser.add_argument("--max_request_mb", type=int, default=GatewayConfig.max_request_mb,
                        help="larger request bodies get 413")
    parser.add_argument("--default_max_tokens", type=int, default=GatewayConfig.default_max_tokens,
                        help="a chat request's max_tokens when it gives none")
    parser.add_argument("--auth_token", default=None, help="the bearer token the gRPC services require")
    parser.add_argument("--tls_ca", default=None, help="the CA of the gRPC services' certificates")
    parser.add_argument("--tls_client_cert", default=None, help="this gateway's certificate (PEM) for gRPC "
                        "services that require one (mutual TLS), with --tls_client_key")
    parser.add_argument("--tls_client_key", default=None, help="the key of --tls_client_cert (PEM)")
    parser.add_argument("--grace_seconds", type=float, default=GatewayConfig.grace_seconds,
                        help="on SIGTERM, how long open requests may go on")


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    return GatewayConfig(inference=tuple(args.inference), tokenizer=args.tokenizer, host=args.host, port=args.port,
                         api_key=args.api_key, insecure=args.insecure, auth_token=args.auth_token,
                         tls_ca=args.tls_ca, tls_client_cert=args.tls_client_cert,
                         tls_client_key=args.tls_client_key,
                         model_name=args.model_name, max_request_mb=args.max_request_mb,
                         default_max_tokens=args.default_max_tokens, grace_seconds=args.grace_seconds)


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound socket (port 0: a free one), for uvicorn to serve on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise DbrxServeError(f"cannot bind {host}:{port} ({error.strerror}): is the port in use?") from None
    return sock


class UvicornServer(uvicorn.Server):
    """Stopped from outside (`should_exit`), as our gRPC servers are by rpc.stop_signal, rather than
    by uvicorn's own signal handlers (which raise the signal again once drained: exit -15, not 0)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def uvicorn_server(config: GatewayConfig) -> UvicornServer:
    return UvicornServer(uvicorn.Config(build_app(config), log_level="warning", access_log=False, lifespan="on",
                                        timeout_graceful_shutdown=config.grace_seconds))


async def serve_config(config: GatewayConfig) -> None:
    """Serve until SIGINT/SIGTERM, then drain."""
    rpc.warn_if_open(config.host, config.api_key, config.insecure)
    sock = listening_socket(config.host, config.port)
    print(f"listening on {config.host}:{sock.getsockname()[1]}", flush=True)
    server, stop = uvicorn_server(config), rpc.stop_signal()
    stopping = asyncio.ensure_future(stop_on(stop, server))
    try:
        await server.serve(sockets=[sock])
    finally:
        stopping.cancel()


async def stop_on(event: asyncio.Event, server: uvicorn.Server) -> None:
    await event.wait()
    server.should_exit = True


def main(argv: list[str] | None = None) -> int:
    """`dbrx serve openai ...`: runs until SIGINT/SIGTERM; 2 on a bad setting."""
    parser = argparse.ArgumentParser(prog="dbrx serve openai", description="OpenAI-compatible HTTP gateway")
    add_serve_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("dbrx_serve").setLevel(logging.INFO)
    return rpc.run_server("dbrx serve openai", lambda: serve_config(config_from_args(args)))


if __name__ == "__main__":
    raise SystemExit(main())
