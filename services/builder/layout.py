"""The tensors one rank must hold, by name: dtype and shape.

Float names and shapes are those of `DbrxModel`'s state dict for the rank's
`LocalShape` (built on the meta device, so nothing is allocated); the
weight-only layout replaces the four GEMM weights as docs/trtllm-checkpoint.md's
weight-only table says; an engine holds int8 and int4 weights in tiles (shared/tiles.py).
The engine's rank files hold exactly these tensors.
"""

import re

import torch

from dbrx_serve.shared.quantization import QUANTIZED_SUFFIXES, scheme
from dbrx_serve.shared.weight_only import engine_weight_shape, halves, scale_shape
from dbrx_serve.shared.config import DbrxConfig
from dbrx_serve.shared.mapping import Mapping
from dbrx_serve.shared.model import DbrxModel, LocalShape

Layout = dict[str, tuple[torch.dtype, tuple[int, ...]]]
KV_SCALING_SUFFIX = ".attention.kv_cache_scaling_factor"  # TensorRT-LLM's INT8 KV scale: not an engine tensor
LAYER_NAME = re.compile(r"transformer\.layers\.(\d+)\.")


def float_layout(cfg: DbrxConfig, mapping: Mapping, rank: int, dtype: torch.dtype) -> Layout:
    """The float checkpoint's tensors of `rank`: the model's, in dtype D, the router in float32."""
    with torch.device("meta"):
        model = DbrxModel(cfg, LocalShape.of(cfg, mapping, rank))
    return {name: (torch.float32 if name.endswith("mlp.router.weight") else dtype, tuple(t.shape))
            for name, t in model.state_dict().items()}


def weight_only_layout(layout: Layout, precision: str, group_size: int | None = None, engine: bool = False) -> Layout:
    """The four GEMMs as the checkpoint's int8 [.., in, out*bits/8] (or, `engine`, as an engine holds
    them: int4 in tiles) plus, in D, per_channel_scale [.., out] or group-wise weights_scaling_factor
    [.., in/group_size, out]."""
    s, out = scheme(precision, group_size), {}
    for name, (dtype, shape) in layout.items():
        if name.endswith(QUANTIZED_SUFFIXES):
            *lead, rows, cols = shape
            out[name] = (torch.int8, engine_weight_shape(tuple(lead), rows, cols, precision, halves(name)) if engine
                         else (*lead, cols, rows * s.bits // 8))
            out[name.removesuffix("weight") + s.scale_name] = (dtype, (*lead, *scale_shape(cols, rows, group_size)))
        else:
            out[name] = (dtype, shape)
    return out


def kv_scaling_names(layout: Layout) -> set[str]:
    """The optional kv_cache_scaling_factor tensor of each local layer."""
    return {name.removesuffix(".qkv.weight") + ".kv_cache_scaling_factor"
            for name in layout if name.endswith("attention.qkv.weight")}


def group_names(names) -> list[list[str]]:
    """Names in the order a rank is built: the embedding, each local layer, the head."""
    layers: dict[int, list[str]] = {}
    first, last = [], []
    for name in sorted(names):
        match = LAYER_NAME.match(name)
        if match is not None:
            layers.setdefault(int(match.group(1)), []).append(name)
        else:
            (first if name.startswith("transformer.vocab_embedding") else last).append(name)
    return [g for g in [first, *(layers[i] for i in sorted(layers)), last] if g]
