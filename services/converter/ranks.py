"""Convert one rank: its file from the HF tensors, a group (embedding, a
layer, the head) at a time, read lazily (parallel.py runs several).

Between groups the converter drops its file mappings (`HFCheckpoint.close`),
so what stays resident is about one layer's tensors per process, plus the
rank file's writer, which streams to disk (rank_file.py).
"""

import re
from dataclasses import dataclass
from pathlib import Path


import torch

from dbrx_serve.shared.artifacts import rank_file
from dbrx_serve.shared.hf_checkpoint import HFCheckpoint
from dbrx_serve.shared.mapping import Mapping
from dbrx_serve.shared.parallel import Events
from dbrx_serve.shared.reference import torch_dtype
from dbrx_serve.shared.sharding import rank_tensors

from dbrx_serve.shared.quantization import WeightOnly, quantize_tensors
from dbrx_serve.shared.rank_file import RankFileWriter

LAYER_QKV = re.compile(r"transformer\.layers\.(\d+)\.attention\.qkv\.weight")


@dataclass(frozen=True)
class RankTask:
    model_dir: str
    mapping: Mapping
    rank: int
    dtype: str
    path: str  # the rank file to write
    weight_only: WeightOnly | None = None  # the weight-only scheme when the converter quantizes
    kv_scaling: tuple[float, ...] | None = None  # kv_cache_scaling_factor per global layer


def group_count(mapping: Mapping, rank: int, num_layers: int) -> int:
    """Tensor groups of a rank: its layers, plus the embedding and the head where it has them."""
    return len(mapping.layers(rank, num_layers)) + mapping.is_first_pp(rank) + mapping.is_last_pp(rank)


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
    return quantize_tensors(group, task.weight_only) if task.weight_only else group


def convert_rank(task: RankTask, events: Events) -> None:
    """Write one rank file; `events.step` after each group (it raises Cancelled to stop there)."""
    ckpt = HFCheckpoint(task.model_dir)
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
        ckpt.close()


def rank_path(root: Path, rank: int) -> str:
    return str(rank_file(root, rank))
