"""The BUILD job handler and `dbrx worker builder`: lease build jobs from the
store and run them, with progress and cancellation between tensor groups.

A retried job (its previous worker died) first removes the temporary output
that worker left; the previous worker no longer holds the lease, so it
cannot be writing there any more."""

import logging
import signal
import threading

from dbrx_serve.shared.artifacts import remove_stale_temps
from dbrx_serve.shared.jobstore import BUILD, Job, JobContext, JobStore, Worker

from .build import build
from .options import BuildOptions

log = logging.getLogger("dbrx_serve.builder.worker")


def handle_build(job: Job, ctx: JobContext) -> dict:
    """Run one BUILD job; its result is the build's summary."""
    options = BuildOptions.from_dict(job.spec)
    if job.attempts > 1:
        for stale in remove_stale_temps(options.output_dir):
            log.info("job %s: removed %s left by an earlier attempt", job.id, stale)
    return build(options, progress=ctx.progress, check=ctx.checkpoint)


def builder_worker(store: JobStore, **worker_args) -> Worker:
    return Worker(store, BUILD, handle_build, **worker_args)


def run_worker(database_url: str | None, lease_seconds: float = 30.0, poll_seconds: float = 1.0) -> int:
    """`dbrx worker builder`: run build jobs until SIGINT/SIGTERM (the job in hand is finished first)."""
    with JobStore.open(database_url) as store:
        worker = builder_worker(store, lease_seconds=lease_seconds, poll_seconds=poll_seconds)
        stop_on_signals(worker)
        print(f"builder worker {worker.config.owner} on {store.config.backend}", flush=True)
        worker.run_forever()
    return 0


def stop_on_signals(worker: Worker) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: worker.stop())
