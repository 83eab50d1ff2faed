"""Weight-only int8 / int4 as a transform of a rank's float tensors
(docs/trtllm-checkpoint.md, "Weight-only int8 / int4", our `plain` layout).

A float weight [out, in] (or [El, out, in]) becomes an int8 tensor [in, out]
(int4: [in, out/2], two values a byte, even column in the low nibble) and a
`per_channel_scale` [out] (or [El, out]) in the checkpoint dtype, with
scale = amax/127 (amax/7) per output column and q = clamp(round(w/scale)).
"""

from dataclasses import dataclass

import torch

from dbrx_serve.shared.errors import InvalidInput


@dataclass(frozen=True)
class WeightOnly:
    """One weight-only scheme: `bits`, the largest |q|, and the checkpoint's quant_algo name."""

    bits: int
    qmax: int
    quant_algo: str


SCHEMES = {"int8": WeightOnly(8, 127, "W8A16"), "int4": WeightOnly(4, 7, "W4A16")}
QUANTIZED_SUFFIXES = ("attention.qkv.weight", "attention.dense.weight", "mlp.fc.weight", "mlp.proj.weight")


def scheme(precision: str) -> WeightOnly:
    if precision not in SCHEMES:
        raise InvalidInput(f"weight_only_precision {precision!r} is not supported: choose one of "
                           f"{', '.join(SCHEMES)}")
    return SCHEMES[precision]


def quantize_weight(w: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Float [.., out, in] in dtype D -> (int8 [.., in, out*bits/8], scale [.., out] in D)."""
    if w.dim() == 3:  # [El, out, in]: one expert at a time, so float32 temporaries stay one expert's size
        parts = [quantize_weight(expert, precision) for expert in w]
        return torch.stack([q for q, _ in parts]), torch.stack([scale for _, scale in parts])
    s = scheme(precision)
    wt = w.transpose(-1, -2).float()  # [.., in, out]
    amax = wt.abs().amax(dim=-2)  # [.., out]
    scale = torch.where(amax == 0, torch.ones_like(amax), amax / s.qmax).to(w.dtype)  # stored scale, in D
    q = torch.round(wt / scale.float().unsqueeze(-2)).clamp(-s.qmax, s.qmax).to(torch.int8)
    q = pack_int4(q) if s.bits == 4 else q
    return q.contiguous(), scale.contiguous()


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
    """(int8 [.., in, out*bits/8], scale [.., out]) -> float32 [.., out, in]: q * scale, transposed back."""
    values = unpack_int4(q) if scheme(precision).bits == 4 else q
    return (values.float() * scale.float().unsqueeze(-2)).transpose(-1, -2)


def quantize_tensors(tensors: dict[str, torch.Tensor], precision: str) -> dict[str, torch.Tensor]:
    """A group of float checkpoint tensors with the four GEMM weights quantized; the rest unchanged."""
    out = {}
    for name, tensor in tensors.items():
        if name.endswith(QUANTIZED_SUFFIXES):
            out[name], out[name.removesuffix("weight") + "per_channel_scale"] = quantize_weight(tensor, precision)
        else:
            out[name] = tensor
    return out
