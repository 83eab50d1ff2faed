"""The inference server: `build_server(config)` apart from `serve_config(config)`.

    dbrx serve inference --engine_dir E --port N [--device cuda|cpu] [--max_queue_size N]
                         [--gpu_memory_fraction F | --memory_budget_bytes B]
                         [--verify_checksums] [--auth_token T] [--tls_cert C --tls_key K]

It listens at once with health NOT_SERVING, loads the engine (logging its
memory plan: memory.py), warms it up, then serves (SERVING). On SIGINT/SIGTERM: NOT_SERVING, no new calls, the
requests in flight get the grace period to finish, then end CANCELLED; then
the engine stops. An engine of several ranks runs as rank 0 of an MPI world
(launch.py starts it when no mpirun did); when a rank dies, open streams end
UNAVAILABLE, health goes NOT_SERVING and the server exits (status 2) at once,
ending the world."""

import argparse
import asyncio
import logging
import sys

import grpc

from dbrx_serve.shared import rpc
from dbrx_serve.shared.errors import DbrxServeError
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2_grpc as pb_grpc
from dbrx_serve.shared.metrics import InferenceMetrics

from .config import InferenceServiceConfig
from .host import EngineHost
from .launch import as_world
from .memory import add_memory_args
from .metrics import EngineGauges
from .servicer import InferenceServicer
from .supervisor import supervise
from .world import WorldLost

SERVICE_NAME = "dbrx.serve.v1.InferenceService"
DEFAULT_PORT = 50054
CALLS_END_SECONDS = 1.0  # after the grace period, for cancelled calls to end CANCELLED before gRPC cuts them


def build_server(config: InferenceServiceConfig) -> tuple[grpc.aio.Server, int]:
    """Register the service (with health and reflection) and bind the port; the engine is
    loaded by `start` (server.host). Request latencies, token counts and the engine's gauges go
    to server.registry, served on --metrics_port."""
    host, metrics = EngineHost(config), InferenceMetrics()
    metrics.registry.register(EngineGauges(host))
    servicer = rpc.Servicer(pb_grpc.add_InferenceServiceServicer_to_server, InferenceServicer(host, metrics),
                            SERVICE_NAME)
    server, port = rpc.build_server([servicer], config.server, metrics.registry)
    server.host, server.metrics = host, metrics
    return server, port


async def start(server: grpc.aio.Server) -> asyncio.Task:
    """Listen (NOT_SERVING), then load the engine in the background; returns that task,
    which ends only when the engine stops (or fails to load)."""
    await rpc.start(server, serving=False)
    return server.host.start(server)


async def serve_config(config: InferenceServiceConfig) -> None:
    server, port = build_server(config)
    running = await start(server)
    print(f"listening on {config.server.host}:{port}", flush=True)
    stop = asyncio.ensure_future(rpc.stop_signal().wait())
    done, _ = await asyncio.wait([running, stop], return_when=asyncio.FIRST_COMPLETED)
    if stop not in done and running.exception() is None:
        await stop  # the engine stopped: health says NOT_SERVING until we are told to exit
    lost = running.done() and not running.cancelled() and isinstance(running.exception(), WorldLost)
    await stop_serving(server, 0.0 if lost else config.server.grace_seconds)  # a lost world ends at once
    await server.host.close()
    if not running.cancelled() and running.exception() is not None:
        raise running.exception()  # the engine did not load: say why


async def stop_serving(server: grpc.aio.Server, grace_seconds: float) -> None:
    """Refuse new calls (NOT_SERVING); requests in flight finish within the grace period or end
    CANCELLED; other calls (health watches) are cut a moment later."""
    server.host.drain()
    await asyncio.gather(rpc.drain(server, grace_seconds + CALLS_END_SECONDS), server.host.wind_down(grace_seconds))


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine_dir", required=True, help="a directory written by dbrx build")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when present)")
    parser.add_argument("--max_queue_size", type=int, default=None, help="waiting requests beyond this: "
                        "RESOURCE_EXHAUSTED (default 4096)")
    parser.add_argument("--max_batch_size", type=int, default=None, help="lower the engine's built batch size")
    add_memory_args(parser)
    parser.add_argument("--verify_checksums", action="store_true",
                        help="hash every byte of the engine at start (default: sizes and headers only)")
    parser.add_argument("--tokenizer_dir", default=None, help="in place of the engine's tokenizer/")
    parser.add_argument("--grace_seconds", type=float, default=10.0,
                        help="on SIGTERM, how long streams in flight may go on before they are cancelled")
    parser.add_argument("--hostfile", default=None, help="an engine of several ranks: the hosts of the MPI "
                        "world this command starts (passed to mpiexec)")
    rpc.add_server_flags(parser, DEFAULT_PORT)


def config_from_args(args: argparse.Namespace) -> InferenceServiceConfig:
    server = rpc.server_config(args, grace_seconds=args.grace_seconds)
    return InferenceServiceConfig(engine_dir=args.engine_dir, device=args.device, max_queue_size=args.max_queue_size,
                                  max_batch_size=args.max_batch_size, gpu_memory_fraction=args.gpu_memory_fraction,
                                  memory_budget_bytes=args.memory_budget_bytes,
                                  verify_checksums=args.verify_checksums, tokenizer_dir=args.tokenizer_dir,
                                  server=server)


def main(argv: list[str] | None = None) -> int:
    """`dbrx serve inference ...`: runs until SIGINT/SIGTERM; 2 on a bad setting or engine."""
    if (status := supervise()) is not None:  # an MPI launcher started us: the rank runs as our child
        return status
    parser = argparse.ArgumentParser(prog="dbrx serve inference", description="DBRX inference gRPC server")
    add_serve_args(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    package = logging.getLogger("dbrx_serve")
    package.setLevel(min(package.getEffectiveLevel(), logging.INFO))  # the load time is worth a line
    try:
        config = config_from_args(args)
        status = as_world(["serve", "inference", *argv], args.engine_dir, args.hostfile)
    except DbrxServeError as error:
        print(f"dbrx serve inference: {error}", file=sys.stderr, flush=True)
        return 2
    if status is not None:  # a rank other than 0, or the world started here has ended
        return status
    return rpc.run_server("dbrx serve inference", lambda: serve_config(config))


if __name__ == "__main__":
    raise SystemExit(main())
