"""Ranks in parallel: `--workers N` spawned processes, each converting whole
ranks with its own lazy reader. Children report each finished group through a
queue; the parent turns those into progress, runs the cancel check while it
waits, and on a cancel or an error sets a stop event that children check
between groups (as they do their parent's death)."""

import multiprocessing
import os
import signal
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from queue import Empty

import torch

from dbrx_serve.shared.errors import Cancelled
from dbrx_serve.shared.hf_checkpoint import HFCheckpoint

from .progress import Reporter
from .ranks import RankTask, convert_rank

POLL_SECONDS = 0.2


def run_ranks(tasks: list[RankTask], workers: int, reporter: Reporter) -> None:
    """All ranks, in this process (workers == 1) or in up to `workers` spawned processes."""
    if workers <= 1 or len(tasks) <= 1:
        with HFCheckpoint(tasks[0].model_dir) as ckpt:
            for task in tasks:
                convert_rank(task, reporter, ckpt)
        return
    ParallelRanks(min(workers, len(tasks)), reporter).run(tasks)


_child: dict = {}


def _init_child(queue, stop, threads: int) -> None:
    """Ctrl-C reaches the whole process group: children ignore it and stop when the parent says so."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    _child.update(queue=queue, stop=stop, parent=os.getppid())


class ChildEvents:
    """In a worker process: steps go to the parent's queue; stop when asked or orphaned."""

    def step(self, message: str) -> None:
        _child["queue"].put(message)
        self.check()

    def check(self) -> None:
        if _child["stop"].is_set() or os.getppid() != _child["parent"]:
            raise Cancelled("conversion stopped")


def _convert_in_child(task: RankTask) -> int:
    convert_rank(task, ChildEvents())
    return task.rank


class ParallelRanks:
    def __init__(self, workers: int, reporter: Reporter):
        self.workers, self.reporter = workers, reporter
        self.context = multiprocessing.get_context("spawn")

    def run(self, tasks: list[RankTask]) -> None:
        steps, stop = self.context.Queue(), self.context.Event()
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        with ProcessPoolExecutor(self.workers, mp_context=self.context, initializer=_init_child,
                                 initargs=(steps, stop, threads)) as pool:
            futures = [pool.submit(_convert_in_child, task) for task in tasks]
            try:
                self._follow(futures, steps)
            except BaseException:
                stop.set()
                for future in futures:
                    future.cancel()
                raise
        self._drain(steps)

    def _follow(self, futures, steps) -> None:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_EXCEPTION)
            self._drain(steps)
            for future in done:
                future.result()  # a child's error (InvalidInput, ...) surfaces here
            self.reporter.check()

    def _drain(self, steps) -> None:
        """Each message in the queue is one finished group of some rank."""
        while True:
            try:
                message = steps.get_nowait()
            except Empty:
                return
            self.reporter.step(message)
