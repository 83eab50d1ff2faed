"""The CONVERT job handler and `dbrx worker converter`: lease conversion jobs
from the store and run them, with progress and cancellation between tensor
groups (and calibration samples).

A retried job (its previous worker died) first removes the temporary output
that worker left; the previous worker no longer holds the lease, so it
cannot be writing there any more."""

import logging
import signal
import threading

from dbrx_serve.shared.artifacts import remove_stale_temps
from dbrx_serve.shared.jobstore import CONVERT, Job, JobContext, JobStore, Worker

from .convert import convert
from .options import ConvertOptions

log = logging.getLogger("dbrx_serve.converter.worker")


def handle_convert(job: Job, ctx: JobContext) -> dict:
    """Run one CONVERT job; its result is the conversion's summary."""
    options = ConvertOptions.from_dict(job.spec)
    if job.attempts > 1:
        for stale in remove_stale_temps(options.output_dir):
            log.info("job %s: removed %s left by an earlier attempt", job.id, stale)
    return convert(options, progress=ctx.progress, check=ctx.checkpoint)


def converter_worker(store: JobStore, **worker_args) -> Worker:
    return Worker(store, CONVERT, handle_convert, **worker_args)


def run_worker(database_url: str | None, lease_seconds: float = 30.0, poll_seconds: float = 1.0) -> int:
    """`dbrx worker converter`: run conversion jobs until SIGINT/SIGTERM (the job in hand is finished first)."""
    with JobStore.open(database_url) as store:
        worker = converter_worker(store, lease_seconds=lease_seconds, poll_seconds=poll_seconds)
        stop_on_signals(worker)
        print(f"converter worker {worker.config.owner} on {store.config.backend}", flush=True)
        worker.run_forever()
    return 0


def stop_on_signals(worker: Worker) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: worker.stop())
