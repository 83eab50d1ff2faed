"""Convert ranks: one rank's file from the HF tensors, a group (embedding, a
layer, the head) at a time, read lazily; several ranks in parallel processes.

Between groups the converter drops its file mappings (`HFCheckpoint.close`),
so what stays resident is about one layer's tensors per process, plus the
rank file's writer, which streams to disk (rank_file.py).
"""

import multiprocessing
import os
import re
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from dbrx_serve.shared.errors import Cancelled
from dbrx_serve.shared.hf_checkpoint import HFCheckpoint
from dbrx_serve.shared.mapping import Mapping
from dbrx_serve.shared.reference import torch_dtype
from dbrx_serve.shared.sharding import rank_tensors

from .progress import Reporter
from .quantize import quantize_tensors
from .rank_file import RankFileWriter

LAYER_QKV = re.compile(r"transformer\.layers\.(\d+)\.attention\.qkv\.weight")
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class RankTask:
    model_dir: str
    mapping: Mapping
    rank: int
    dtype: str
    path: str  # the rank file to write
    precision: str | None = None  # weight-only precision when the converter quantizes
    kv_scaling: tuple[float, ...] | None = None  # kv_cache_scaling_factor per global layer


def group_count(mapping: Mapping, rank: int, num_layers: int) -> int:
    """Tensor groups of a rank: its layers, plus the embedding and the head where it has them."""
    return len(mapping.layers(rank, num_layers)) + mapping.is_first_pp(rank) + mapping.is_last_pp(rank)


class RankEvents(Protocol):
    def step(self, message: str) -> None: ...
    def check(self) -> None: ...


def group_label(group: dict, task: RankTask, num_layers: int) -> str:
    """What a group is, by global layer index."""
    for name in group:
        if (match := LAYER_QKV.fullmatch(name)) is not None:
            return f"layer {task.mapping.layers(task.rank, num_layers)[int(match.group(1))]}"
    return "embedding" if "transformer.vocab_embedding.weight" in group else "head"


def finish_group(group: dict[str, torch.Tensor], task: RankTask) -> dict[str, torch.Tensor]:
    """The float group as the checkpoint stores it: KV scaling factors added, GEMMs quantized if asked."""
    layers = task.mapping.layers(task.rank, len(task.kv_scaling)) if task.kv_scaling else None
    for name in list(group):
        if layers is not None and (match := LAYER_QKV.fullmatch(name)) is not None:
            factor = task.kv_scaling[layers[int(match.group(1))]]
            group[name.removesuffix("qkv.weight") + "kv_cache_scaling_factor"] = torch.tensor([factor])
    return quantize_tensors(group, task.precision) if task.precision else group


def convert_rank(task: RankTask, events: RankEvents, ckpt: HFCheckpoint | None = None) -> None:
    """Write one rank file; `events.step` after each group, `events.check` before reading the next."""
    own = ckpt is None
    ckpt = ckpt or HFCheckpoint(task.model_dir)
    writer = RankFileWriter(task.path)
    try:
        for group in rank_tensors(ckpt, task.mapping, task.rank, torch_dtype(task.dtype)):
            label = group_label(group, task, ckpt.config.n_layers)
            writer.add_all(finish_group(group, task))
            del group
            ckpt.close()  # unmap what was read; the next get() reopens lazily
            events.step(f"rank {task.rank}: {label}")
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    finally:
        if own:
            ckpt.close()


def run_ranks(tasks: list[RankTask], workers: int, reporter: Reporter) -> None:
    """All ranks, in this process (workers == 1) or in up to `workers` spawned processes."""
    if workers <= 1 or len(tasks) <= 1:
        with HFCheckpoint(tasks[0].model_dir) as ckpt:
            for task in tasks:
                convert_rank(task, reporter, ckpt)
        return
    ParallelRanks(min(workers, len(tasks)), reporter).run(tasks)


# --- the parallel path: child processes report steps through a queue and watch a stop event ---

_child: dict = {}


def _init_child(queue, stop, threads: int) -> None:
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
        queue, stop = self.context.Queue(), self.context.Event()
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        with ProcessPoolExecutor(self.workers, mp_context=self.context, initializer=_init_child,
                                 initargs=(queue, stop, threads)) as pool:
            futures = [pool.submit(_convert_in_child, task) for task in tasks]
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
            except Exception:  # queue.Empty
                return
            self.reporter.step(message)


def rank_path(root: Path, rank: int) -> str:
    return str(root / f"rank{rank}.safetensors")
