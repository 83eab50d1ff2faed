"""The int4 engine layout (shared/int4_tiles.py): the bytes where its docstring and
docs/trtllm-checkpoint.md say, padding by halves, and the way back to the checkpoint's bytes."""

import pytest
import torch

from dbrx_serve.shared.int4_tiles import tile_int4, tiled_shape, untile_int4
from dbrx_serve.shared.quantization import pack_int4


def values(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(-8, 8, shape, dtype=torch.int8, generator=torch.Generator().manual_seed(seed))


def checkpoint_bytes(q: torch.Tensor) -> torch.Tensor:
    """[.., out, in] values -> the checkpoint's int4 [.., in, out/2]."""
    return pack_int4(q.transpose(-1, -2).contiguous())


def test_each_byte_holds_the_values_of_its_lane_rows_and_columns():
    """Tile (a, b), warp w, lane 4g + t, step s, byte 2h + e: row 64a + 16w + g + 8h, columns
    64b + 16s + 2t + e (low nibble) and 8 further (high nibble)."""
    q = values(128, 192)
    tiles = tile_int4(checkpoint_bytes(q)).view(torch.uint8)
    assert tiles.shape == (2, 3, 2048) == tiled_shape((), 128, 192)
    for a, b, w, g, t, s, h, e in [(0, 0, 0, 0, 0, 0, 0, 0), (1, 2, 3, 7, 3, 3, 1, 1), (0, 1, 2, 5, 1, 2, 0, 1),
                                   (1, 0, 1, 3, 2, 1, 1, 0)]:
        byte = int(tiles[a, b, w * 512 + (4 * g + t) * 16 + s * 4 + 2 * h + e])
        row, col = 64 * a + 16 * w + g + 8 * h, 64 * b + 16 * s + 2 * t + e
        assert (byte & 0xF) == int(q[row, col]) & 0xF and (byte >> 4) == int(q[row, col + 8]) & 0xF


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
    assert int(tiles.view(torch.uint8).to(torch.int64).count_nonzero()) <= q.count_nonzero()  # padding is zeros
    if halves == 2:  # the gate's first row is row 0 of the second half's first tile (byte 0: its column 0)
        gate_tile = tiles[0, tiles.shape[1] // 2, 0].view(torch.uint8)
        assert int(gate_tile[0]) & 0xF == int(q[0, half, 0]) & 0xF
