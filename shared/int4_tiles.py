"""int4 weights as the GPU's tensor cores take them: the engine's `int4_tiles_v2` layout.

The checkpoint stores an int4 GEMM weight as TensorRT-LLM does, int8 [.., in, out/2] with two
output columns a byte (shared/quantization.py's pack_int4). An int4 engine stores the same values
as the GEMM kernel (services/inference/kernels/gemm.py) reads them: the weight as [out, in] cut into
tiles of 64 x 64, each tile 2,048 bytes in the order Hopper's wgmma wants its first operand in a
warpgroup's registers, so that one 16-byte read a thread (from the pipeline's copy in shared memory)
and a few bit operations put them there, with no gathering of bytes (bench/results/gemm_int4_tiles_probe.json).

    tiles [.., out'/64, in'/64, 2048] int8    (out', in': out and in rounded up to 64, values 0 beyond)

Inside a tile (rows r = output features, columns c = input features), 32-bit words go in the order
(warp w 0..3, lane 0..31, step s 0..3): lane = 4g + t holds, for each K step s of 16 columns, the 8
values of rows 16w + g + 8h and columns 16s + 8j + 2t + e (h, j, e in {0, 1}), wgmma's register fragment.
Each value is a nibble in offset binary (value + 8) at bit 4(2j + h) + 16e of its word, so that one
shift and one mask put the two values of a bfloat16x2 register (e = 0 and 1) in its two 16-bit halves
(gemm.py's NIBBLES_TO_BF16). Words are little-endian: byte 2e + j holds h = 0 in its low nibble and
h = 1 in its high one.

A gated weight (the experts' `mlp.fc`, [up; gate] along out) pads each half to whole tiles on its
own, so that the gate starts on a tile (`halves` 2).
"""

import torch

from .quantization import pack_int4, unpack_int4

TILE = 64
TILE_BYTES = TILE * TILE // 2


def tiles(n: int) -> int:
    """Tiles of 64 that hold n rows or columns."""
    return -(-n // TILE)


def tiled_shape(lead: tuple[int, ...], out_features: int, in_features: int, halves: int = 1) -> tuple[int, ...]:
    return (*lead, halves * tiles(out_features // halves), tiles(in_features), TILE_BYTES)


def tile_int4(packed: torch.Tensor, halves: int = 1) -> torch.Tensor:
    """The checkpoint's int4 [.., in, out/2] -> tiles [.., out'/64, in'/64, 2048] int8."""
    values = unpack_int4(packed).transpose(-1, -2)  # [.., out, in]
    *lead, n, k = values.shape
    half = n // halves
    padded = values.new_zeros(*lead, halves, tiles(half) * TILE, tiles(k) * TILE)
    padded[..., :half, :k] = values.unflatten(-2, (halves, half))
    # rows (tile, w, h, g), columns (tile, s, j, t, e) -> (row tile, column tile, w, g, t, s, e, j, h)
    v = padded.reshape(*lead, halves * tiles(half), 4, 2, 8, tiles(k), 4, 2, 4, 2)
    d = len(lead)
    u = v.permute(*range(d), *(d + i for i in (0, 4, 1, 3, 7, 5, 8, 6, 2))).to(torch.int16) + 8
    byte = u[..., 0] | (u[..., 1] << 4)  # byte 2e + j of a word: h = 0 low, h = 1 high
    return byte.to(torch.uint8).view(torch.int8).reshape(*lead, halves * tiles(half), tiles(k), TILE_BYTES)


def tile_values(tiled: torch.Tensor, out_features: int, in_features: int, halves: int = 1) -> torch.Tensor:
    """The values tiles hold: int8 [.., out, in] in [-8, 7]."""
    *lead, row_tiles, col_tiles, _ = tiled.shape
    byte = tiled.reshape(*lead, row_tiles, col_tiles, 4, 8, 4, 4, 2, 2, 1)  # (.., w, g, t, s, e, j, 1)
    values = torch.cat([byte & 0xF, (byte >> 4) & 0xF], dim=-1) - 8  # (.., e, j, h)
    d = len(lead)
    # (row tile, column tile, w, g, t, s, e, j, h) -> rows (tile, w, h, g), columns (tile, s, j, t, e)
    v = values.permute(*range(d), *(d + i for i in (0, 2, 8, 3, 1, 5, 7, 4, 6)))
    v = v.reshape(*lead, halves, row_tiles // halves * TILE, col_tiles * TILE)
    half = out_features // halves
    return v[..., :half, :in_features].flatten(-3, -2)  # [.., out, in]


def untile_int4(tiled: torch.Tensor, out_features: int, in_features: int, halves: int = 1) -> torch.Tensor:
    """The inverse of tile_int4: tiles -> the checkpoint's int4 [.., in, out/2]."""
    return pack_int4(tile_values(tiled, out_features, in_features, halves).transpose(-1, -2)).contiguous()
