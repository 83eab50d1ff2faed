"""The int4 engine layout (shared/int4_tiles.py): the bytes where its docstring and
docs/trtllm-checkpoint.md say, padding by halves, and the way back to the checkpoint's bytes."""

import itertools

import pytest
import torch

from dbrx_serve.shared.int4_tiles import tile_int4, tiled_shape, untile_int4
from dbrx_serve.shared.quantization import pack_int4


def values(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(-8, 8, shape, dtype=torch.int8, generator=torch.Generator().manual_seed(seed))


def checkpoint_bytes(q: torch.Tensor) -> torch.Tensor:
    """[.., out, in] values -> the checkpoint's int4 [.., in, out/2]."""
    return pack_int4(q.transpose(-1, -2).contiguous())


def test_each_word_holds_the_values_of_its_lane_rows_and_columns():
    """Tile (a, b), warp w, lane 4g + t, step s: the word's nibble at bit 4(2j + h) + 16e is the value at row
    64a + 16w + g + 8h, column 64b + 16s + 8j + 2t + e, plus 8."""
    q = values(128, 192)
    tiles = tile_int4(checkpoint_bytes(q))
    assert tiles.shape == (2, 3, 2048) == tiled_shape((), 128, 192)
    words = tiles.view(torch.int32).to(torch.int64) & 0xFFFFFFFF  # little-endian words
    for a, b, w, g, t, s in [(0, 0, 0, 0, 0, 0), (1, 2, 3, 7, 3, 3), (0, 1, 2, 5, 1, 2), (1, 0, 1, 3, 2, 1)]:
        word = int(words[a, b, w * 128 + (4 * g + t) * 4 + s])
        for j, h, e in itertools.product((0, 1), repeat=3):
            row, col = 64 * a + 16 * w + g + 8 * h, 64 * b + 16 * s + 8 * j + 2 * t + e
            assert (word >> (4 * (2 * j + h) + 16 * e)) & 0xF == int(q[row, col]) + 8


@pytest.mark.parametrize("out_features, in_features, halves", [(96, 64, 1), (130, 70, 1), (64, 100, 2),
                                                               (32, 48, 2)])
def test_ragged_weights_pad_with_zeros_and_come_back(out_features, in_features, halves):
    """out and in rounded up to 64 (each half of a gated weight on its own, so the gate starts on a tile),
    zeros beyond; experts lead."""
    q = values(3, out_features, in_features, seed=out_features)
    tiles = tile_int4(checkpoint_bytes(q), halves)
    half = out_features // halves
    assert tiles.shape == tiled_shape((3,), out_features, in_features, halves) == (
        3, halves * -(-half // 64), -(-in_features // 64), 2048)
    assert torch.equal(untile_int4(tiles, out_features, in_features, halves), checkpoint_bytes(q))
    nibbles = torch.stack([tiles & 0xF, (tiles >> 4) & 0xF])
    assert int((nibbles != 8).sum()) <= q.count_nonzero()  # padding is zeros (nibble 8)
    if halves == 2:  # the gate's first row is row 0 of the second half's first tile (word 0, bit 0: its column 0)
        gate_tile = tiles[0, tiles.shape[1] // 2, 0]
        assert int(gate_tile[0]) & 0xF == int(q[0, half, 0]) + 8
