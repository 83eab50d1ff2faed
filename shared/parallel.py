"""Run per-rank tasks in this process, or in up to `workers` spawned processes
that report each step through a queue and stop when the parent says so (a
cancel or another rank's failure) or dies.

    run_tasks(build_rank, tasks, workers, reporter)   # build_rank(task, events)

`events` has `step(message)` (one step done, then a cancellation point) and
`check()`; in the parent it is the reporter itself.
"""

import multiprocessing
import os
import queue as queues
import signal
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any, Callable, Protocol, Sequence

import torch

from dbrx_serve.shared.errors import Cancelled

POLL_SECONDS = 0.2


class Events(Protocol):
    def step(self, message: str) -> None: ...
    def check(self) -> None: ...


Task = Callable[[Any, Events], None]


def run_tasks(fn: Task, tasks: Sequence, workers: int, reporter: Events) -> None:
    """Every task, in order in this process (workers == 1), else in parallel processes."""
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            fn(task, reporter)
        return
    ParallelTasks(min(workers, len(tasks)), reporter).run(fn, tasks)


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
            raise Cancelled("stopped by the parent process")


def _run_in_child(fn: Task, task) -> None:
    fn(task, ChildEvents())


class ParallelTasks:
    def __init__(self, workers: int, reporter: Events):
        self.workers, self.reporter = workers, reporter
        self.context = multiprocessing.get_context("spawn")

    def run(self, fn: Task, tasks: Sequence) -> None:
        queue, stop = self.context.Queue(), self.context.Event()
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        with ProcessPoolExecutor(self.workers, mp_context=self.context, initializer=_init_child,
                                 initargs=(queue, stop, threads)) as pool:
            futures = [pool.submit(_run_in_child, fn, task) for task in tasks]
            try:
                self._follow(futures, queue)
            except BaseException:
                stop.set()
                for future in futures:
                    future.cancel()
                raise
        self._drain(queue)

    def _follow(self, futures, queue) -> None:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_EXCEPTION)
            self._drain(queue)
            for future in done:
                future.result()  # a child's error (InvalidInput, ...) surfaces here
            self.reporter.check()

    def _drain(self, queue) -> None:
        while True:
            try:
                message = queue.get_nowait()
            except queues.Empty:
                return
            self.reporter.step(message)
