"""The int8 and int4 engine layouts (shared/tiles.py): the bytes where its docstring and
docs/trtllm-checkpoint.md say, padding by halves, and the way back to the checkpoint's bytes."""

import itertools

import pytest
import torch

from dbrx_serve.shared.tiles import tile_weight, tiled_shape, untile
from dbrx_serve.shared.quantization import pack_int4


def values(*shape: int, seed: int = 0, bits: int = 4) -> torch.Tensor:
    high = 1 << (bits - 1)
    return torch.randint(-high, high, shape, dtype=torch.int8, generator=torch.Generator().manual_seed(seed))


def checkpoint_bytes(q: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """[.., out, in] values -> the checkpoint's int4 [.., in, out/2] or int8 [.., in, out]."""
    q = q.transpose(-1, -2).contiguous()
    return pack_int4(q) if bits == 4 else q


def test_each_word_holds_the_values_of_its_lane_rows_and_columns():
    """Tile (a, b), warp w, lane 4g + t, step s: the word's nibble at bit 4(2j + h) + 16e is the value at row
    64a + 16w + g + 8h, column 64b + 16s + 8j + 2t + e, plus 8."""
    q = values(128, 192)
    tiles = tile_weight(checkpoint_bytes(q), 4)
    assert tiles.shape == (2, 3, 2048) == tiled_shape((), 128, 192, 4)
    words = tiles.view(torch.int32).to(torch.int64) & 0xFFFFFFFF  # little-endian words
    for a, b, w, g, t, s in [(0, 0, 0, 0, 0, 0), (1, 2, 3, 7, 3, 3), (0, 1, 2, 5, 1, 2), (1, 0, 1, 3, 2, 1)]:
        word = int(words[a, b, w * 128 + (4 * g + t) * 4 + s])
        for j, h, e in itertools.product((0, 1), repeat=3):
            row, col = 64 * a + 16 * w + g + 8 * h, 64 * b + 16 * s + 8 * j + 2 * t + e
            assert (word >> (4 * (2 * j + h) + 16 * e)) & 0xF == int(q[row, col]) + 8


def test_each_int8_lane_holds_its_rows_and_columns_in_register_order():
    """Tile (a, b), half c, warp w, lane 4g + t: byte 8s' + 4j + 2h + e of the lane's 16 (at 512(4c + w) +
    16(4g + t)) is the value at row 64a + 16w + g + 8h, column 64b + 16(2c + s') + 8j + 2t + e, plus 128."""
    q = values(128, 192, bits=8)
    tiles = tile_weight(checkpoint_bytes(q, 8), 8)
    assert tiles.shape == (2, 3, 4096) == tiled_shape((), 128, 192, 8)
    offset_binary = tiles.view(torch.uint8).to(torch.int16)
    for a, b, c, w, g, t in [(0, 0, 0, 0, 0, 0), (1, 2, 1, 3, 7, 3), (0, 1, 1, 2, 5, 1), (1, 0, 0, 1, 3, 2)]:
        lane = offset_binary[a, b, 512 * (4 * c + w) + 16 * (4 * g + t):][:16]
        for s, j, h, e in itertools.product((0, 1), repeat=4):
            row, col = 64 * a + 16 * w + g + 8 * h, 64 * b + 16 * (2 * c + s) + 8 * j + 2 * t + e
            assert int(lane[8 * s + 4 * j + 2 * h + e]) == int(q[row, col]) + 128


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("out_features, in_features, halves", [(96, 64, 1), (130, 70, 1), (64, 100, 2),
                                                               (32, 48, 2)])
def test_ragged_weights_pad_with_zeros_and_come_back(bits, out_features, in_features, halves):
    """out and in rounded up to 64 (each half of a gated weight on its own, so the gate starts on a tile),
    zeros beyond; experts lead."""
    q = values(3, out_features, in_features, seed=out_features, bits=bits)
    tiles = tile_weight(checkpoint_bytes(q, bits), bits, halves)
    half = out_features // halves
    assert tiles.shape == tiled_shape((3,), out_features, in_features, bits, halves) == (
        3, halves * -(-half // 64), -(-in_features // 64), 64 * 8 * bits)
    assert torch.equal(untile(tiles, bits, out_features, in_features, halves), checkpoint_bytes(q, bits))
    u = tiles.view(torch.uint8).to(torch.int16)
    offset = 1 << (bits - 1)
    stored = torch.stack([u & 0xF, u >> 4]) if bits == 4 else u
    assert int((stored != offset).sum()) <= q.count_nonzero()  # padding is zeros (offset binary)
    if halves == 2:  # the gate's first row is row 0 of the second half's first tile (word 0, bit 0: its column 0)
        gate_tile = u[0, tiles.shape[1] // 2, 0]
        assert int(gate_tile[0]) & (0xF if bits == 4 else 0xFF) == int(q[0, half, 0]) + offset
