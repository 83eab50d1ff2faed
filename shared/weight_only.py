"""Weight-only int8 / int4 GEMMs as a module swap (gpt-fast's way): the model's
four GEMMs (`attention.qkv`, `attention.dense`, `mlp.fc`, `mlp.proj`) are
replaced, from outside the model, by modules that hold the checkpoint's int8
weights and `per_channel_scale` under the same names and dequantize them per
layer at each call. `forward` of the model never branches on quantization.

The layout and the quantize / pack / unpack code are the converter's
(shared/quantization.py, docs/trtllm-checkpoint.md's weight-only table).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .quantization import SCHEMES, dequantize_weight, scheme
from dbrx_serve.shared.errors import InvalidInput

from .model import DbrxModel, ExpertLinear

PRECISION_OF_ALGO = {s.quant_algo: name for name, s in SCHEMES.items()}  # "W8A16" -> "int8"


def precision_of(quant_algo: str) -> str:
    if quant_algo not in PRECISION_OF_ALGO:
        raise InvalidInput(f"quant_algo {quant_algo!r} is not a weight-only scheme: choose one of "
                           f"{', '.join(PRECISION_OF_ALGO)}")
    return PRECISION_OF_ALGO[quant_algo]


def packed_columns(out_features: int, precision: str) -> int:
    return out_features * scheme(precision).bits // 8


class WeightOnlyLinear(nn.Module):
    """nn.Linear(in, out) with `weight` int8 [in, out*bits/8] and `per_channel_scale` [out]."""

    def __init__(self, in_features: int, out_features: int, precision: str, dtype: torch.dtype):
        super().__init__()
        self.precision = precision
        self.register_buffer("weight", torch.empty(in_features, packed_columns(out_features, precision),
                                                   dtype=torch.int8))
        self.register_buffer("per_channel_scale", torch.empty(out_features, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = dequantize_weight(self.weight, self.per_channel_scale, self.precision)  # [out,in] float32
        return F.linear(x, w.to(x.dtype))


class WeightOnlyExpertLinear(nn.Module):
    """ExpertLinear [El, out, in] with `weight` int8 [El, in, out*bits/8] and `per_channel_scale` [El, out]."""

    def __init__(self, n_experts: int, out_features: int, in_features: int, precision: str, dtype: torch.dtype):
        super().__init__()
        self.precision = precision
        self.register_buffer("weight", torch.empty(n_experts, in_features, packed_columns(out_features, precision),
                                                   dtype=torch.int8))
        self.register_buffer("per_channel_scale", torch.empty(n_experts, out_features, dtype=dtype))

    def forward(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        w = dequantize_weight(self.weight[expert], self.per_channel_scale[expert], self.precision)  # [out,in]
        return x @ w.to(x.dtype).T


def weight_only_linear(module: nn.Linear, precision: str, dtype: torch.dtype) -> WeightOnlyLinear:
    return WeightOnlyLinear(module.in_features, module.out_features, precision, dtype)


def weight_only_experts(module: ExpertLinear, precision: str, dtype: torch.dtype) -> WeightOnlyExpertLinear:
    n_experts, out_features, in_features = module.weight.shape
    return WeightOnlyExpertLinear(n_experts, out_features, in_features, precision, dtype)


def swap_weight_only(model: DbrxModel, precision: str, dtype: torch.dtype) -> DbrxModel:
    """Replace each block's four GEMMs by weight-only modules (empty: load the rank file after)."""
    for block in model.transformer.layers:
        attn, mlp = block.attention, block.mlp
        attn.qkv = weight_only_linear(attn.qkv, precision, dtype)
        attn.dense = weight_only_linear(attn.dense, precision, dtype)
        mlp.fc = weight_only_experts(mlp.fc, precision, dtype)
        mlp.proj = weight_only_experts(mlp.proj, precision, dtype)
    return model


def dequantized_state(state: dict[str, torch.Tensor], precision: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A weight-only rank's tensors as float weights (what the float model loads): the reference."""
    out = {}
    for name, tensor in state.items():
        if name.endswith(".per_channel_scale"):
            continue
        scale = state.get(name.removesuffix("weight") + "per_channel_scale")
        out[name] = tensor if scale is None else dequantize_weight(tensor, scale, precision).to(dtype)
    return out
