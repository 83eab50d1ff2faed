"""Weight-only int8 / int4 as a transform of a rank's float tensors
(docs/trtllm-checkpoint.md, "Weight-only int8 / int4", our `plain` layout).

A float weight [out, in] (or [El, out, in]) becomes an int8 tensor [in, out]
(int4: [in, out/2], two values a byte, even column in the low nibble) and its
scales in the checkpoint dtype, q = clamp(round(w/scale)) with scale = amax/127
(amax/7) over each group of input rows of each output column:

- per channel (the default): one group of all `in` rows, `per_channel_scale` [out];
- group-wise int4 (`group_size` g of 64 or 128, TensorRT-LLM's `W4A16_GPTQ` without
  zero points or pre-quant scales): `weights_scaling_factor` [in/g, out], the names and
  shapes of TensorRT-LLM's tensorrt_llm/quantization/layers.py
  `WeightOnlyGroupwiseQuantLinear` (experts: [El, in/g, out], its layers/moe.py).
"""

from dataclasses import dataclass, replace

import torch

from dbrx_serve.shared.errors import InvalidInput, shown


@dataclass(frozen=True)
class WeightOnly:
    """One weight-only scheme: `bits`, the largest |q|, the checkpoint's quant_algo name and, for
    group-wise scales, the input rows each scale covers (None: one scale per output column)."""

    bits: int
    qmax: int
    quant_algo: str
    group_size: int | None = None

    @property
    def precision(self) -> str:
        return f"int{self.bits}"

    @property
    def scale_name(self) -> str:
        return "weights_scaling_factor" if self.group_size else "per_channel_scale"

    def config(self) -> dict:
        """This scheme's keys of the checkpoint config's `quantization` (TensorRT-LLM's QuantConfig)."""
        grouped = {"group_size": self.group_size, "has_zero_point": False, "pre_quant_scale": False}
        return {"quant_algo": self.quant_algo, **(grouped if self.group_size else {})}


SCHEMES = {"int8": WeightOnly(8, 127, "W8A16"), "int4": WeightOnly(4, 7, "W4A16")}
GROUP_SIZES = (64, 128)
GROUPED_QUANT_ALGO = "W4A16_GPTQ"  # TensorRT-LLM's group-wise int4 (convert_checkpoint.py's int4_gptq)
PRECISION_OF_ALGO = {"W8A16": "int8", "W4A16": "int4", GROUPED_QUANT_ALGO: "int4"}
QUANTIZED_SUFFIXES = ("attention.qkv.weight", "attention.dense.weight", "mlp.fc.weight", "mlp.proj.weight")
SCALE_SUFFIXES = tuple(f".{s}" for s in ("per_channel_scale", "weights_scaling_factor"))


def scheme(precision: str, group_size: int | None = None) -> WeightOnly:
    if precision not in SCHEMES:
        raise InvalidInput(f"weight_only_precision {precision!r} is not supported: choose one of "
                           f"{', '.join(SCHEMES)}")
    if group_size is None:
        return SCHEMES[precision]
    if precision != "int4":
        raise InvalidInput(f"group_size applies to int4 weight-only only, not {precision}: drop --group_size "
                           "or pass --weight_only_precision int4")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size not in GROUP_SIZES:
        raise InvalidInput(f"group_size {shown(group_size)} is not supported: choose one of "
                           f"{', '.join(map(str, GROUP_SIZES))}")
    return replace(SCHEMES[precision], quant_algo=GROUPED_QUANT_ALGO, group_size=group_size)


def scheme_of(quantization: dict | None) -> WeightOnly | None:
    """The weight-only scheme of a checkpoint config's `quantization` (None: float weights)."""
    quant = quantization or {}
    algo = quant.get("quant_algo")
    if algo is None:
        return None
    if algo not in PRECISION_OF_ALGO:
        raise InvalidInput(f"quant_algo {algo!r} is not supported: our engine runs float or weight-only "
                           f"({', '.join(PRECISION_OF_ALGO)}) checkpoints")
    if algo != GROUPED_QUANT_ALGO:
        return scheme(PRECISION_OF_ALGO[algo])
    if quant.get("has_zero_point") or quant.get("pre_quant_scale"):
        raise InvalidInput(f"{algo} with zero points or pre-quant scales (GPTQ/AWQ exports) is not supported: "
                           "convert from the float model with --weight_only_precision int4 --group_size")
    if quant.get("group_size") is None:
        raise InvalidInput(f"quant_algo {algo} needs quantization.group_size "
                           f"({', '.join(map(str, GROUP_SIZES))})")
    return scheme("int4", quant["group_size"])


def quantize_weight(w: torch.Tensor, precision: str, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float [.., out, in] in dtype D -> (int8 [.., in, out*bits/8], scale [.., out] in D, or
    [.., in/group_size, out] group-wise)."""
    if w.dim() == 3:  # [El, out, in]: one expert at a time, so float32 temporaries stay one expert's size
        parts = [quantize_weight(expert, precision, group_size) for expert in w]
        return torch.stack([q for q, _ in parts]), torch.stack([scale for _, scale in parts])
    s = scheme(precision, group_size)
    rows = w.shape[-1]
    if rows % (group_size or rows):
        raise InvalidInput(f"group_size {group_size} does not divide the {rows} input columns of a weight")
    groups = w.transpose(-1, -2).float().unflatten(0, (-1, group_size or rows))  # [G, g, out]; per channel G = 1
    amax = groups.abs().amax(dim=1)  # [G, out]
    scale = torch.where(amax == 0, torch.ones_like(amax), amax / s.qmax).to(w.dtype)  # stored scale, in D
    q = torch.round(groups / scale.float().unsqueeze(1)).clamp(-s.qmax, s.qmax).flatten(0, 1).to(torch.int8)
    q = pack_int4(q) if s.bits == 4 else q
    return q.contiguous(), (scale if group_size else scale[0]).contiguous()


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """[.., out] int8 values in [-8, 7] -> [.., out/2]: column 2k low nibble, 2k+1 high, two's complement."""
    if q.shape[-1] % 2:
        raise InvalidInput(f"int4 packing needs an even number of output columns, got {q.shape[-1]}")
    low, high = q[..., 0::2].to(torch.int16) & 0xF, q[..., 1::2].to(torch.int16) & 0xF
    return ((high << 4) | low).to(torch.uint8).view(torch.int8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of pack_int4: [.., n] int8 -> [.., 2n] int8 values in [-8, 7]."""
    byte = packed.view(torch.uint8).to(torch.int16)
    low, high = byte & 0xF, byte >> 4
    values = torch.stack([low, high], dim=-1).flatten(-2)  # [.., 2n], 0..15
    return torch.where(values > 7, values - 16, values).to(torch.int8)


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, precision: str) -> torch.Tensor:
    """(int8 [.., in, out*bits/8], scale [.., out] or group-wise [.., G, out]) -> float32 [.., out, in]:
    q * scale of its group, transposed back. A scale with q's rank is group-wise."""
    return dequantize_values(unpack_int4(q) if scheme(precision).bits == 4 else q, scale)


def dequantize_values(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Int values [.., in, out] (unpacked) and their scale -> float32 [.., out, in] (dequantize_weight)."""
    values = q.float()
    groups = scale.float() if scale.dim() == q.dim() else scale.float().unsqueeze(-2)  # [.., G, out]
    per_group = values.unflatten(-2, (groups.shape[-2], -1)) * groups.unsqueeze(-2)  # [.., G, in/G, out]
    return per_group.flatten(-3, -2).transpose(-1, -2)


def quantize_tensors(tensors: dict[str, torch.Tensor], s: WeightOnly) -> dict[str, torch.Tensor]:
    """A group of float checkpoint tensors with the four GEMM weights quantized to scheme `s` (each
    with its scale, named as `s` names it); the rest unchanged."""
    out = {}
    for name, tensor in tensors.items():
        if name.endswith(QUANTIZED_SUFFIXES):
            out[name], out[name.removesuffix("weight") + s.scale_name] = quantize_weight(tensor, s.precision,
                                                                                          s.group_size)
        else:
            out[name] = tensor
    return out
