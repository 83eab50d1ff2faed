"""int8 and int4 weights as the GPU's tensor cores take them: the engine's `int8_tiles` and
`int4_tiles_v2` layouts.

The checkpoint stores a weight-only GEMM weight as TensorRT-LLM does, int8 [.., in, out] (int4: two
output columns a byte, [.., in, out/2]; shared/quantization.py's pack_int4). An engine stores the same
values as the GEMM kernel (services/inference/kernels/gemm.py) reads them: the weight as [out, in] cut
into tiles of 64 x 64, each tile (2,048 bytes of int4, 4,096 of int8) in the order Hopper's wgmma wants
its first operand in a warpgroup's registers, so that 16-byte reads a thread (from the pipeline's copy in
shared memory) and a few bit operations put them there, with no gathering of bytes
(bench/results/gemm_int4_tiles_probe.json).

    tiles [.., out'/64, in'/64, TILE_BYTES[bits]] int8    (out', in': out and in rounded up to 64, values 0 beyond)

Inside a tile (rows r = output features, columns c = input features), wgmma's register fragment: for
each K step s of 16 columns, lane 4g + t of warp w holds the 8 values of rows 16w + g + 8h and columns
16s + 8j + 2t + e (h, j, e in {0, 1}). Values are in offset binary (value + 8, value + 128), so that the
kernel puts them under a float's exponent with bit operations alone.

int4: 32-bit words in the order (warp w 0..3, lane 0..31, step s 0..3), a word a lane and K step, each
value a nibble at bit 4(2j + h) + 16e of its word, so that one shift and one mask put the two values of a
bfloat16x2 register (e = 0 and 1) in its two 16-bit halves (gemm.py's NIBBLES_TO_BF16). Words are
little-endian: byte 2e + j holds h = 0 in its low nibble and h = 1 in its high one.

int8: a tile is two halves of 32 columns (c 0..1: steps s = 2c + s', s' 0..1), each laid out as an int4
tile is: 16 bytes a lane in the order (c, warp w, lane, s', j, h, e), byte 2h + e of word (s', j) the
value of register h's half e (gemm.py's BYTES_TO_BF16). A tile row of 512 bytes is then (c, w) a
warp's 16 bytes a lane, as an int4 tile row is w.

A gated weight (the experts' `mlp.fc`, [up; gate] along out) pads each half to whole tiles on its
own, so that the gate starts on a tile (`halves` 2).
"""

import torch

from .quantization import pack_int4, unpack_int4

TILE = 64
TILE_BYTES = {4: TILE * TILE // 2, 8: TILE * TILE}
OFFSET = {4: 8, 8: 128}  # offset binary: the byte or nibble holds value + OFFSET
# A tile's values, [rows (w, h, g), columns] split into its bytes' order: the dims of
# [.., out'/64, 64, in'/64, 64] viewed as (row tile, w, h, g, column tile, <columns>), and the permutation to
# (row tile, column tile, <byte order>); the last dim pair of int4 (j, h) is the nibble order of a byte.
COLUMNS = {4: (4, 2, 4, 2), 8: (2, 2, 2, 4, 2)}  # int4 (s, j, t, e); int8 (c, s', j, t, e)
ORDER = {4: (0, 4, 1, 3, 7, 5, 8, 6, 2),  # (w, g, t, s, e, j, h)
         8: (0, 4, 5, 1, 3, 8, 6, 7, 2, 9)}  # (c, w, g, t, s', j, h, e)


def tiles(n: int) -> int:
    """Tiles of 64 that hold n rows or columns."""
    return -(-n // TILE)


def tiled_shape(lead: tuple[int, ...], out_features: int, in_features: int, bits: int,
                halves: int = 1) -> tuple[int, ...]:
    return (*lead, halves * tiles(out_features // halves), tiles(in_features), TILE_BYTES[bits])


def _padded(values: torch.Tensor, halves: int) -> torch.Tensor:
    """Values [.., out, in] -> [.., out', in'] with each half of out padded to whole tiles, zeros beyond."""
    *lead, n, k = values.shape
    half = n // halves
    padded = values.new_zeros(*lead, halves, tiles(half) * TILE, tiles(k) * TILE)
    padded[..., :half, :k] = values.unflatten(-2, (halves, half))
    return padded.flatten(-3, -2)


def tile_weight(q: torch.Tensor, bits: int, halves: int = 1) -> torch.Tensor:
    """The checkpoint's int weight [.., in, out * bits / 8] -> tiles [.., out'/64, in'/64, TILE_BYTES] int8."""
    values = (unpack_int4(q) if bits == 4 else q).transpose(-1, -2)  # [.., out, in]
    padded = _padded(values, halves)
    *lead, n, k = padded.shape
    d = len(lead)
    v = padded.reshape(*lead, n // TILE, 4, 2, 8, k // TILE, *COLUMNS[bits])
    v = v.permute(*range(d), *(d + i for i in ORDER[bits]))
    if bits == 8:  # value + 128 in a byte: its top bit flipped (no wider copy of an expert's weights)
        byte = v.contiguous().view(torch.uint8) ^ 0x80
    else:  # byte 2e + j holds h = 0 low, h = 1 high
        u = v.to(torch.uint8) + OFFSET[bits]
        byte = u[..., 0] | (u[..., 1] << 4)
    return byte.view(torch.int8).reshape(*lead, n // TILE, k // TILE, TILE_BYTES[bits])


def tile_values(tiled: torch.Tensor, bits: int, out_features: int, in_features: int, halves: int = 1) -> torch.Tensor:
    """The values tiles hold: int8 [.., out, in]."""
    *lead, row_tiles, col_tiles, _ = tiled.shape
    byte = tiled.view(torch.uint8).to(torch.int16)
    if bits == 4:  # (w, g, t, s, e, j) bytes, each (h) two nibbles
        byte = byte.reshape(*lead, row_tiles, col_tiles, 4, 8, 4, 4, 2, 2, 1)
        byte = torch.cat([byte & 0xF, byte >> 4], dim=-1)
    shape = [4, 8, 4, 4, 2, 2, 2] if bits == 4 else [2, 4, 8, 4, 2, 2, 2, 2]
    values = byte.reshape(*lead, row_tiles, col_tiles, *shape) - OFFSET[bits]
    d = len(lead)
    back = [0] * len(ORDER[bits])  # the inverse of ORDER
    for position, dim in enumerate(ORDER[bits]):
        back[dim] = position
    v = values.permute(*range(d), *(d + i for i in back))
    v = v.reshape(*lead, halves, row_tiles // halves * TILE, col_tiles * TILE)
    half = out_features // halves
    return v[..., :half, :in_features].flatten(-3, -2).to(torch.int8)  # [.., out, in]


def untile(tiled: torch.Tensor, bits: int, out_features: int, in_features: int, halves: int = 1) -> torch.Tensor:
    """The inverse of tile_weight: tiles -> the checkpoint's int weight [.., in, out * bits / 8]."""
    values = tile_values(tiled, bits, out_features, in_features, halves).transpose(-1, -2)
    return (pack_int4(values) if bits == 4 else values).contiguous()
