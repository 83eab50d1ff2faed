"""Build one engine rank file from one checkpoint rank file, a tensor group
(the embedding, a layer, the head) at a time: read lazily, quantized here
for the `--quantize_at_build` form, streamed to disk by the converter's
`RankFileWriter`, so peak memory is about one layer of one rank. int4 GEMM
weights are written in the tiles the GPU kernel reads (shared/tiles.py).
TensorRT-LLM's `kv_cache_scaling_factor` tensors are left out: the engine
takes its KV scales from `kv_cache_scales.json`."""

from dataclasses import dataclass

import torch
from safetensors import safe_open

from dbrx_serve.shared.artifacts import rank_file
from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.parallel import Events
from dbrx_serve.shared.quantization import QUANTIZED_SUFFIXES, WeightOnly, quantize_tensors
from dbrx_serve.shared.rank_file import RankFileWriter
from dbrx_serve.shared.weight_only import engine_weight, halves

from .checkpoint import QUANTIZE_AT_BUILD, Checkpoint, stored_layout
from .layout import LAYER_NAME, group_names


@dataclass(frozen=True)
class RankTask:
    """Everything one rank's build needs, picklable for a worker process."""

    source: str  # the checkpoint's rank file
    path: str  # the engine's rank file to write
    rank: int
    groups: tuple[tuple[str, ...], ...]  # tensor names, one group per step
    layers: tuple[int, ...]  # global index of each local layer
    weight_only: WeightOnly | None  # quantize the GEMMs to this scheme (quantize-at-build form)
    precision: str | None  # of weight-only engines: their GEMM weights are written as the engine holds them

    def label(self, group: tuple[str, ...]) -> str:
        match = LAYER_NAME.match(group[0])
        if match is not None:
            return f"rank {self.rank}: layer {self.layers[int(match.group(1))]}"
        return f"rank {self.rank}: {'embedding' if 'vocab_embedding' in group[0] else 'head'}"


def rank_tasks(ckpt: Checkpoint, engine_dir) -> list[RankTask]:
    weight_only = ckpt.weight_only if ckpt.form == QUANTIZE_AT_BUILD else None
    precision = ckpt.weight_only and ckpt.weight_only.precision
    return [RankTask(str(ckpt.rank_path(rank)), str(rank_file(engine_dir, rank)), rank,
                     tuple(tuple(g) for g in group_names(stored_layout(ckpt, rank))),
                     tuple(ckpt.mapping.layers(rank, ckpt.model.n_layers)), weight_only, precision)
            for rank in range(ckpt.mapping.world_size)]


def build_rank(task: RankTask, events: Events) -> None:
    """Write one engine rank file; `events.check()` before each group, `events.step` after."""
    writer = RankFileWriter(task.path)
    try:
        for group in task.groups:
            events.check()
            tensors = check_finite(read_group(task.source, group), task.source)
            tensors = quantize_tensors(tensors, task.weight_only) if task.weight_only else tensors
            writer.add_all(engine_tensors(tensors, task.precision) if task.precision else tensors)
            del tensors
            events.step(task.label(group))
        writer.finish()
    except BaseException:
        writer.abort()
        raise


def read_group(source: str, names: tuple[str, ...]) -> dict:
    """A group's tensors, the file opened for this group only: its mapped pages do not stay
    resident for the rest of the rank (measured: peak RSS ~ baseline + one layer)."""
    with safe_open(source, framework="pt") as f:
        return {name: f.get_tensor(name) for name in names}


def engine_tensors(tensors: dict[str, torch.Tensor], precision: str) -> dict[str, torch.Tensor]:
    """The GEMM weights among a weight-only rank's tensors as the engine holds them (int4: tiles)."""
    return {name: engine_weight(t, precision, halves(name)) if name.endswith(QUANTIZED_SUFFIXES) else t
            for name, t in tensors.items()}


def check_finite(tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Refuse NaN or infinite weights (a checkpoint without a manifest is checked no other way)."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InvalidInput(f"{source}: tensor {name} holds NaN or infinite values; convert the checkpoint again")
    return tensors
