"""The builder server: BuilderService and JobService over one job store.

    dbrx serve builder --port 50053 [--database_url URL] [--local_workers N]

Builds run in `dbrx worker builder` processes (any host that sees the store
and the file system); `--local_workers N` also runs N worker threads in the
server process, for a one-host setup."""

import argparse
import asyncio
import logging
import sys
import threading

import grpc

from dbrx_serve.shared import rpc
from dbrx_serve.shared.errors import DbrxServeError, InvalidInput
from dbrx_serve.shared.jobstore import JobStore, Worker
from dbrx_serve.shared.jobstore.service import job_servicer

from .servicer import builder_servicer
from .worker import builder_worker

DEFAULT_PORT = 50053


def build_server(store: JobStore, config: rpc.ServerConfig) -> tuple[grpc.aio.Server, int]:
    """Register BuilderService and JobService (with health and reflection), bind the port."""
    return rpc.build_server([builder_servicer(store), job_servicer(store)], config)


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument("--database_url", default=None,
                        help="job store (default: $DBRX_DATABASE_URL, else the embedded SQLite file)")
    parser.add_argument("--local_workers", type=int, default=0, help="build worker threads in this process")
    parser.add_argument("--auth_token", default=None, help="require 'authorization: Bearer <token>'")
    parser.add_argument("--tls_cert", default=None)
    parser.add_argument("--tls_key", default=None)


def server_config(args: argparse.Namespace) -> rpc.ServerConfig:
    return rpc.ServerConfig(host=args.host, port=args.port, auth_token=args.auth_token,
                            tls_cert=args.tls_cert, tls_key=args.tls_key)


def start_local_workers(store: JobStore, count: int) -> list[tuple[Worker, threading.Thread]]:
    if count < 0:
        raise InvalidInput(f"--local_workers must be 0 or more, got {count}")
    workers = [builder_worker(store) for _ in range(count)]
    threads = [threading.Thread(target=w.run_forever, name=f"build-worker-{i}", daemon=True)
               for i, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    return list(zip(workers, threads))


async def serve_builder(args: argparse.Namespace) -> None:
    config = server_config(args)
    with JobStore.open(args.database_url) as store:
        local = start_local_workers(store, args.local_workers)
        server, port = build_server(store, config)

        async def stop_workers():
            for worker, thread in local:
                worker.stop()
            for worker, thread in local:
                await asyncio.to_thread(thread.join)

        await rpc.serve(server, port, config, on_stop=stop_workers)


def main(argv: list[str] | None = None) -> int:
    """`dbrx serve builder ...`; runs until SIGINT/SIGTERM; 2 on a bad setting."""
    parser = argparse.ArgumentParser(prog="dbrx serve builder", description="DBRX builder gRPC server")
    add_serve_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        asyncio.run(serve_builder(args))
    except DbrxServeError as error:
        print(f"dbrx serve builder: {error}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
