"""Weight-only int8 / int4 GEMMs as a module swap (gpt-fast's way): the model's
four GEMMs (`attention.qkv`, `attention.dense`, `mlp.fc`, `mlp.proj`) are
replaced, from outside the model, by modules that hold the checkpoint's int8
weights and scales under the same names (`per_channel_scale`, or group-wise
int4's `weights_scaling_factor`) and dequantize them per layer at each call.
`forward` of the model never branches on quantization.

The checkpoint's layout and the quantize / pack / unpack code are the converter's
(shared/quantization.py, docs/trtllm-checkpoint.md's weight-only table); an
engine holds int8 and int4 weights in tiles for the GPU's tensor cores (shared/tiles.py),
which these modules hold as loaded and dequantize from.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .quantization import SCALE_SUFFIXES, WeightOnly, dequantize_values, dequantize_weight, scheme
from dbrx_serve.shared.errors import InvalidInput

from .tiles import tile_values, tile_weight, tiled_shape

from .model import DbrxModel, ExpertLinear


GATED_SUFFIX = "mlp.fc.weight"  # the experts' [up; gate] along out: tiles pad each half (tiles.py)


LAYOUTS = {4: "int4_tiles_v2", 8: "int8_tiles"}


def weight_layout(precision: str | None) -> str:
    """An engine's build_config.weight_layout: "int4_tiles_v2" for int4 engines, "int8_tiles" for int8
    (shared/tiles.py; "int4_tiles", two's complement nibbles in bytes, was an earlier version's, and
    earlier int8 engines held the checkpoint's [in, out]: "plain"), else "plain" (float weights)."""
    return LAYOUTS[scheme(precision).bits] if precision is not None else "plain"


def halves(name: str) -> int:
    """The halves a weight's tiles pad apart: 2 for the experts' gate+up, else 1."""
    return 2 if name.endswith(GATED_SUFFIX) else 1


def engine_weight_shape(lead: tuple[int, ...], out_features: int, in_features: int, precision: str,
                        halves: int = 1) -> tuple[int, ...]:
    """An engine's int weight: tiles [.., out'/64, in'/64, 4096 (int8) or 2048 (int4)] (tiles.py)."""
    return tiled_shape(lead, out_features, in_features, scheme(precision).bits, halves)


def engine_weight(q: torch.Tensor, precision: str, halves: int = 1) -> torch.Tensor:
    """A checkpoint's int weight [.., in, out*bits/8] as an engine holds it: tiles."""
    return tile_weight(q, scheme(precision).bits, halves)


def scale_shape(in_features: int, out_features: int, group_size: int | None) -> tuple[int, ...]:
    """[out] per channel; [in/group_size, out] group-wise."""
    if group_size is None:
        return (out_features,)
    if in_features % group_size:
        raise InvalidInput(f"group_size {group_size} does not divide a GEMM's {in_features} input columns: "
                           "convert with a group size that divides every GEMM's input width on every rank")
    return (in_features // group_size, out_features)


class WeightOnlyLinear(nn.Module):
    """nn.Linear(in, out) with `weight` as an engine holds it (engine_weight_shape) and its scale:
    `per_channel_scale` [out], or `weights_scaling_factor` [in/group_size, out]; `lead` dims (the
    experts') before both."""

    def __init__(self, in_features: int, out_features: int, precision: str, dtype: torch.dtype,
                 group_size: int | None = None, halves: int = 1, lead: tuple[int, ...] = ()):
        super().__init__()
        self.in_features, self.out_features, self.halves = in_features, out_features, halves
        self.precision, self.scale_name = precision, scheme(precision, group_size).scale_name
        self.register_buffer("weight", torch.empty(
            engine_weight_shape(lead, out_features, in_features, precision, halves), dtype=torch.int8))
        self.register_buffer(self.scale_name, torch.empty(*lead, *scale_shape(in_features, out_features, group_size),
                                                          dtype=dtype))

    @property
    def scale(self) -> torch.Tensor:
        return getattr(self, self.scale_name)

    def values(self, weight: torch.Tensor) -> torch.Tensor:
        """weight (this module's, or one expert's) as its int values [.., in, out], straight from the
        tiles (no re-packing)."""
        bits = scheme(self.precision).bits
        return tile_values(weight, bits, self.out_features, self.in_features, self.halves).transpose(-1, -2)

    def dequantized(self) -> torch.Tensor:
        """The float32 weight [.., out, in] (the reference's)."""
        return dequantize_values(self.values(self.weight), self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized().to(x.dtype))


class WeightOnlyExpertLinear(WeightOnlyLinear):
    """ExpertLinear [El, out, in] with `weight` [El, ..] as an engine holds it and its scale:
    `per_channel_scale` [El, out], or `weights_scaling_factor` [El, in/group_size, out]."""

    def __init__(self, n_experts: int, out_features: int, in_features: int, precision: str, dtype: torch.dtype,
                 group_size: int | None = None, halves: int = 1):
        super().__init__(in_features, out_features, precision, dtype, group_size, halves, lead=(n_experts,))

    def forward(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        w = dequantize_values(self.values(self.weight[expert]), self.scale[expert])
        return x @ w.to(x.dtype).T


def weight_only_linear(module: nn.Linear, s: WeightOnly, dtype: torch.dtype) -> WeightOnlyLinear:
    return WeightOnlyLinear(module.in_features, module.out_features, s.precision, dtype, s.group_size)


def weight_only_experts(module: ExpertLinear, s: WeightOnly, dtype: torch.dtype, halves: int = 1
                        ) -> WeightOnlyExpertLinear:
    n_experts, out_features, in_features = module.weight.shape
    return WeightOnlyExpertLinear(n_experts, out_features, in_features, s.precision, dtype, s.group_size, halves)


def swap_weight_only(model: DbrxModel, s: WeightOnly, dtype: torch.dtype) -> DbrxModel:
    """Replace each block's four GEMMs by weight-only modules of scheme `s` (empty: load the rank file after)."""
    for i, block in enumerate(model.transformer.layers):
        attn, mlp = block.attention, block.mlp
        attn.qkv = weight_only_linear(attn.qkv, s, dtype)
        attn.dense = weight_only_linear(attn.dense, s, dtype)
        mlp.fc = weight_only_experts(mlp.fc, s, dtype, halves(f"transformer.layers.{i}.mlp.fc.weight"))
        mlp.proj = weight_only_experts(mlp.proj, s, dtype, halves(f"transformer.layers.{i}.mlp.proj.weight"))
    return model


def dequantized_state(state: dict[str, torch.Tensor], precision: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A weight-only checkpoint rank's tensors as float weights (what the float model loads): the reference."""
    out = {}
    for name, tensor in state.items():
        if name.endswith(SCALE_SUFFIXES):
            continue
        scales = [state.get(name.removesuffix(".weight") + suffix) for suffix in SCALE_SUFFIXES]
        scale = next((s for s in scales if s is not None), None)
        out[name] = tensor if scale is None else dequantize_weight(tensor, scale, precision).to(dtype)
    return out


def dequantized_engine_state(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A model's state with its weight-only GEMMs (as an engine holds them) as float weights, scales left
    out: what the float model loads to be the reference of an engine."""
    out = {name: t for name, t in model.state_dict().items() if not name.endswith(SCALE_SUFFIXES)}
    for name, module in model.named_modules():
        if isinstance(module, WeightOnlyLinear):
            out[f"{name}.weight"] = module.dequantized().to(dtype)
    return out
