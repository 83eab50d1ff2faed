"""Weight-only int8 / int4 GEMMs as a module swap (gpt-fast's way): the model's
four GEMMs (`attention.qkv`, `attention.dense`, `mlp.fc`, `mlp.proj`) are
replaced, from outside the model, by modules that hold the checkpoint's int8
weights and scales under the same names (`per_channel_scale`, or group-wise
int4's `weights_scaling_factor`) and dequantize them per layer at each call.
`forward` of the model never branches on quantization.

The layout and the quantize / pack / unpack code are the converter's
(shared/quantization.py, docs/trtllm-checkpoint.md's weight-only table).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .quantization import SCALE_SUFFIXES, WeightOnly, dequantize_weight, scheme
from dbrx_serve.shared.errors import InvalidInput

from .model import DbrxModel, ExpertLinear


def packed_columns(out_features: int, precision: str) -> int:
    return out_features * scheme(precision).bits // 8


def scale_shape(in_features: int, out_features: int, group_size: int | None) -> tuple[int, ...]:
    """[out] per channel; [in/group_size, out] group-wise."""
    if group_size is None:
        return (out_features,)
    if in_features % group_size:
        raise InvalidInput(f"group_size {group_size} does not divide a GEMM's {in_features} input columns: "
                           "convert with a group size that divides every GEMM's input width on every rank")
    return (in_features // group_size, out_features)


class WeightOnlyLinear(nn.Module):
    """nn.Linear(in, out) with `weight` int8 [in, out*bits/8] and its scale: `per_channel_scale` [out],
    or `weights_scaling_factor` [in/group_size, out]."""

    def __init__(self, in_features: int, out_features: int, precision: str, dtype: torch.dtype,
                 group_size: int | None = None):
        super().__init__()
        self.precision, self.scale_name = precision, scheme(precision, group_size).scale_name
        self.register_buffer("weight", torch.empty(in_features, packed_columns(out_features, precision),
                                                   dtype=torch.int8))
        self.register_buffer(self.scale_name, torch.empty(scale_shape(in_features, out_features, group_size),
                                                          dtype=dtype))

    @property
    def scale(self) -> torch.Tensor:
        return getattr(self, self.scale_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = dequantize_weight(self.weight, self.scale, self.precision)  # [out,in] float32
        return F.linear(x, w.to(x.dtype))


class WeightOnlyExpertLinear(nn.Module):
    """ExpertLinear [El, out, in] with `weight` int8 [El, in, out*bits/8] and its scale: `per_channel_scale`
    [El, out], or `weights_scaling_factor` [El, in/group_size, out]."""

    def __init__(self, n_experts: int, out_features: int, in_features: int, precision: str, dtype: torch.dtype,
                 group_size: int | None = None):
        super().__init__()
        self.precision, self.scale_name = precision, scheme(precision, group_size).scale_name
        self.register_buffer("weight", torch.empty(n_experts, in_features, packed_columns(out_features, precision),
                                                   dtype=torch.int8))
        self.register_buffer(self.scale_name, torch.empty(n_experts, *scale_shape(in_features, out_features,
                                                                                  group_size), dtype=dtype))

    @property
    def scale(self) -> torch.Tensor:
        return getattr(self, self.scale_name)

    def forward(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        w = dequantize_weight(self.weight[expert], self.scale[expert], self.precision)  # [out,in]
        return x @ w.to(x.dtype).T


def weight_only_linear(module: nn.Linear, s: WeightOnly, dtype: torch.dtype) -> WeightOnlyLinear:
    return WeightOnlyLinear(module.in_features, module.out_features, s.precision, dtype, s.group_size)


def weight_only_experts(module: ExpertLinear, s: WeightOnly, dtype: torch.dtype) -> WeightOnlyExpertLinear:
    n_experts, out_features, in_features = module.weight.shape
    return WeightOnlyExpertLinear(n_experts, out_features, in_features, s.precision, dtype, s.group_size)


def swap_weight_only(model: DbrxModel, s: WeightOnly, dtype: torch.dtype) -> DbrxModel:
    """Replace each block's four GEMMs by weight-only modules of scheme `s` (empty: load the rank file after)."""
    for block in model.transformer.layers:
        attn, mlp = block.attention, block.mlp
        attn.qkv = weight_only_linear(attn.qkv, s, dtype)
        attn.dense = weight_only_linear(attn.dense, s, dtype)
        mlp.fc = weight_only_experts(mlp.fc, s, dtype)
        mlp.proj = weight_only_experts(mlp.proj, s, dtype)
    return model


def dequantized_state(state: dict[str, torch.Tensor], precision: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A weight-only rank's tensors as float weights (what the float model loads): the reference."""
    out = {}
    for name, tensor in state.items():
        if name.endswith(SCALE_SUFFIXES):
            continue
        scales = [state.get(name.removesuffix(".weight") + suffix) for suffix in SCALE_SUFFIXES]
        scale = next((s for s in scales if s is not None), None)
        out[name] = tensor if scale is None else dequantize_weight(tensor, scale, precision).to(dtype)
    return out
