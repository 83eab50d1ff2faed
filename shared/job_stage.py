"""Stages that turn one artifact directory into another as jobs (the converter
and the builder). A `JobStage` value names what differs between them; the job
handler, the worker loop and the gRPC server here are what they share.

    dbrx serve STAGE --port N [--database_url URL] [--local_workers N]
    dbrx worker STAGE [--database_url URL]

Work runs in `dbrx worker STAGE` processes (any host that sees the store and
the file system); `--local_workers N` also runs N worker threads in the
server process, for a one-host setup. The server also queues again, every
SWEEP_SECONDS, the jobs whose worker died (`JobStore.expire_leases`), so that
none stays RUNNING while no worker is left to notice."""

import argparse
import asyncio
import functools
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable

import grpc

from . import logs, rpc
from .artifacts import remove_stale_temps
from .errors import DbrxServeError, InvalidInput
from .jobstore import Job, JobContext, JobState, JobStore, StoreUnavailable, Worker
from .jobstore.service import job_servicer
from .metrics import JobCounts, JobMetrics, serve_metrics
from .options import ANY_ABSOLUTE_PATH, PathPolicy

log = logging.getLogger("dbrx_serve.job_stage")
SWEEP_SECONDS = 10.0  # how often a job server looks for jobs whose worker died


@dataclass(frozen=True)
class JobStage:
    name: str  # "converter": `dbrx serve converter`, `dbrx worker converter`
    kind: str  # the job kind it runs
    default_port: int
    options_from_dict: Callable[[dict], Any]  # a job's spec -> the stage's options (with .output_dir)
    produce: Callable[..., dict]  # produce(options, progress=, check=) -> the job's result
    servicer: Callable[[JobStore, PathPolicy], rpc.Servicer]  # the stage's Submit service over a store
    path_fields: tuple[str, ...]  # the options that name files or directories

    def handle(self, job: Job, ctx: JobContext, paths: PathPolicy = ANY_ABSOLUTE_PATH) -> dict:
        """Run one job. Its paths are checked again here, on the worker's own file system
        (bounds, roots, the output apart from the inputs), before any work. A retried job
        first removes the temporary output its dead worker left (that worker no longer
        holds the lease, so it cannot be writing there)."""
        options = self.options_from_dict(job.spec)
        paths.check(options, self.path_fields, self.name)
        if job.attempts > 1:
            for stale in remove_stale_temps(options.output_dir):
                log.info("job %s: removed %s left by an earlier attempt", job.id, stale)
        return self.produce(options, progress=ctx.progress, check=ctx.checkpoint)

    def worker(self, store: JobStore, paths: PathPolicy = ANY_ABSOLUTE_PATH, **worker_args) -> Worker:
        return Worker(store, self.kind, functools.partial(self.handle, paths=paths), **worker_args)


def run_worker(stage: JobStage, database_url: str | None, lease_seconds: float = 30.0,
               poll_seconds: float = 1.0, paths: PathPolicy = ANY_ABSOLUTE_PATH,
               metrics_port: int | None = None, host: str = "127.0.0.1") -> int:
    """`dbrx worker STAGE`: run jobs until SIGINT/SIGTERM (the job in hand is finished first);
    with a metrics port, its job durations served there."""
    metrics = JobMetrics()
    with JobStore.open(database_url) as store:
        worker = stage.worker(store, paths, lease_seconds=lease_seconds, poll_seconds=poll_seconds, metrics=metrics)
        stop_on_signals(worker)
        if metrics_port is not None:
            exporter = serve_metrics(metrics.registry, host, metrics_port)
            print(f"metrics on http://{host}:{exporter.server_port}/metrics", flush=True)
        print(f"{stage.name} worker {worker.config.owner} on {store.config.backend}", flush=True)
        worker.run_forever()
    return 0


def stop_on_signals(worker: Worker) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: worker.stop())


def start_thread(target, name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def start_worker_thread(worker: Worker, name: str) -> threading.Thread:
    return start_thread(worker.run_forever, name)


def sweep_expired_leases(store: JobStore, kind: str, stop: threading.Event,
                         seconds: float = SWEEP_SECONDS) -> None:
    """Until `stop` is set: every `seconds`, jobs of `kind` whose worker stopped heartbeating
    are queued again, or ended when out of attempts (a server thread's loop)."""
    while not stop.wait(seconds):
        try:
            for job in store.expire_leases(kind):
                log.warning("job %s: %s", job.id, job.message)
        except StoreUnavailable as error:
            log.warning("expired leases not swept: %s", error)


def build_server(stage: JobStage, store: JobStore, config: rpc.ServerConfig,
                 paths: PathPolicy = ANY_ABSOLUTE_PATH) -> tuple[grpc.aio.Server, int]:
    """Register the stage's service and JobService (with health and reflection), bind the port;
    server.registry also counts the store's jobs of this stage per state at each scrape."""
    server, port = rpc.build_server([stage.servicer(store, paths), job_servicer(store)], config)
    server.registry.register(JobCounts(store.count_by_state, stage.kind, tuple(s.value for s in JobState)))
    return server, port


def add_serve_args(stage: JobStage, parser: argparse.ArgumentParser) -> None:
    rpc.add_server_flags(parser, stage.default_port)
    parser.add_argument("--database_url", default=None,
                        help="job store (default: $DBRX_DATABASE_URL, else the embedded SQLite file)")
    parser.add_argument("--local_workers", type=int, default=0, help=f"{stage.name} worker threads in this process")
    parser.add_argument("--allowed_root", action="append", default=[], metavar="DIR",
                        help="accept only requests whose paths lie under DIR (repeatable; default: any absolute path)")


async def serve(stage: JobStage, args: argparse.Namespace) -> None:
    config = rpc.server_config(args)
    if args.local_workers < 0:
        raise InvalidInput(f"--local_workers must be 0 or more, got {args.local_workers}")
    paths = PathPolicy(tuple(args.allowed_root))
    if not paths.allowed_roots:
        log.warning("no --allowed_root: clients may name any absolute path the %s workers can reach", stage.name)
    with JobStore.open(args.database_url) as store:
        server, port = build_server(stage, store, config, paths)
        metrics = JobMetrics(server.registry)
        workers = [stage.worker(store, paths, metrics=metrics) for _ in range(args.local_workers)]
        threads = [start_worker_thread(w, f"{stage.name}-worker-{i}") for i, w in enumerate(workers)]
        swept = threading.Event()
        threads.append(start_thread(lambda: sweep_expired_leases(store, stage.kind, swept), f"{stage.name}-sweep"))

        async def stop_workers():
            swept.set()
            for worker in workers:
                worker.stop()
            for thread in threads:
                await asyncio.to_thread(thread.join)

        await rpc.serve(server, port, config, on_stop=stop_workers)


def serve_main(stage: JobStage, argv: list[str] | None = None) -> int:
    """`dbrx serve STAGE ...`: runs until SIGINT/SIGTERM; 2 on a bad setting."""
    parser = argparse.ArgumentParser(prog=f"dbrx serve {stage.name}", description=f"DBRX {stage.name} gRPC server")
    add_serve_args(stage, parser)
    args = parser.parse_args(argv)
    logs.at_least_info()
    try:
        asyncio.run(serve(stage, args))
    except DbrxServeError as error:
        print(f"dbrx serve {stage.name}: {error}", file=sys.stderr, flush=True)
        return 2
    return 0
