"""The GEMM kernel against the plain path: float, int8 and int4 weights (per
channel and group-wise) as the engine stores them (int8 and int4 in tiles),
ragged shapes, split K, the weight-only module swap."""

from dataclasses import replace

import pytest
import torch

from dbrx_serve.services.inference.kernels import gemm as gemm_module
from dbrx_serve.services.inference.kernels.gemm import (GemmConfig, TritonWeightOnlyLinear, Weights, gemm, moe_config,
                                                         with_split_k)
from dbrx_serve.services.inference.kernels.tuning import ACTIVE
from dbrx_serve.shared.quantization import dequantize_weight, pack_int4, quantize_weight
from dbrx_serve.shared.weight_only import WeightOnlyLinear, engine_weight

from .conftest import BOUND, DEVICE, DTYPES, relative_error

CONFIGS = [GemmConfig(16, 32, 64, 1, 4, 2, dequant=0), GemmConfig(32, 64, 32, 2, 4, 2, dequant=1),
           GemmConfig(16, 32, 32, 3, 4, 3, dequant=1)]
# int tiles are 64 x 64: block_k 64, block_n a multiple of it
INT_CONFIGS = [GemmConfig(16, 64, 64, 1, 4, 2, dequant=0), GemmConfig(32, 64, 64, 2, 4, 2, dequant=1),
               GemmConfig(16, 128, 64, 3, 4, 3, dequant=1)]
CASES = [(None, c) for c in CONFIGS] + [(p, c) for p in ("int8", "int4") for c in INT_CONFIGS]


def config_id(c: GemmConfig) -> str:
    return f"bm{c.block_m}bn{c.block_n}bk{c.block_k}s{c.split_k}d{c.dequant}"


def weights(n: int, k: int, precision: str | None, dtype, device, seed: int,
            group_size: int | None = None) -> tuple[Weights, torch.Tensor]:
    """The kernel's view of a random weight, and the float [n, k] weight it stands for."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g).to(dtype)
    if precision is None:
        return Weights.of(w.to(device)), w.float()
    q, scale = quantize_weight(w, precision, group_size)
    return (Weights.of(engine_weight(q, precision).to(device), scale.to(device), precision, k),
            dequantize_weight(q, scale, precision))


def product_error(m: int, w: Weights, ref_w: torch.Tensor, config: GemmConfig, dtype, device) -> float:
    """Launch the kernel on random x [m, K] (into NaN-filled output, summing split-K partials) and
    return its relative error against x @ ref_w.T in float32."""
    x = torch.randn(m, ref_w.shape[1], generator=torch.Generator().manual_seed(1)).to(dtype)
    split = config.split_k > 1
    out = torch.full((config.split_k, m, w.n), float("nan"), dtype=torch.float32 if split else dtype, device=device)
    gemm(x.to(device), w, out if split else out[0], config)
    got = out.sum(0) if split else out[0]
    return relative_error(got.cpu(), x.float() @ ref_w.T)


@pytest.mark.parametrize("precision, config", CASES, ids=lambda v: config_id(v) if isinstance(v, GemmConfig) else str(v))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gemm_matches_the_float_product(precision, config, dtype, device):
    n, k, m = 80, 208, 37  # none a multiple of the tiles: every edge is masked
    w, ref_w = weights(n, k, precision, dtype, device, seed=n + m)
    assert product_error(m, w, ref_w, config, dtype, device) <= BOUND[dtype]


@pytest.mark.parametrize("group_size", [64, 128])
@pytest.mark.parametrize("config", INT_CONFIGS, ids=config_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_group_wise_int4_matches_the_dequantized_product(group_size, config, dtype, device):
    """One scale per group of K rows, applied per BLOCK_K chunk inside the K loop; a split of K
    starts on a chunk, so every chunk lies in one group."""
    n, k, m = 80, 384, 37  # K: 6 or 3 whole groups; N and M ragged
    w, ref_w = weights(n, k, "int4", dtype, device, seed=n + m, group_size=group_size)
    assert w.group_size == group_size and w.scale.shape == (1, k // group_size, n)
    assert product_error(m, w, ref_w, config, dtype, device) <= BOUND[dtype]


def test_k_splits_fill_the_grid_up_to_their_rule():
    """with_split_k on DBRX's one-token GEMMs with 132 multiprocessors: the experts' int tiles at a pair an
    expert split until ~32 programs a multiprocessor (per_sm), at most 8 (gate+up: 4 pairs x 84 column tiles; down:
    4 x 48); other tiles ~4 a multiprocessor (qkv: 64 tiles); a split keeps two block_k steps of K at least."""
    tile = GemmConfig(16, 128, 64)
    assert with_split_k(tile, 4 * 84, 6144, 132, per_sm=32).split_k == 8
    assert with_split_k(tile, 4 * 48, 10752, 132, per_sm=32).split_k == 8
    assert with_split_k(tile, 4 * 84, 6144, 132).split_k == 1  # 672 programs > 4 x 132
    assert with_split_k(tile, 64, 6144, 132).split_k == 8  # 512 <= 528
    assert with_split_k(tile, 1, 256, 132, per_sm=32).split_k == 2  # 128 rows a split, no fewer


def test_experts_at_one_token_take_their_measured_tiles(monkeypatch):
    """The defaults at one token (DBRX's experts, 132 multiprocessors, no stored table; gemm.py's
    ONE_TOKEN_EXPERTS): int8's gate+up K split in 8 (with_split_k's rule at 64 programs a multiprocessor), down
    few and long (256 columns, K in 4; 3 stages for int8, 4 for int4); int4's gate+up, group-wise int4 and
    two tokens as the rule has them."""
    monkeypatch.setattr(gemm_module, "num_sms", lambda device: 132)
    monkeypatch.setattr(ACTIVE, "table", {})

    def experts(precision: str, n: int, k: int, group_size: int) -> Weights:
        tiles = torch.empty(16, n // 64, k // 64, 4096 if precision == "int8" else 2048, dtype=torch.int8,
                            device="meta")
        scale = torch.empty(16, *([k // group_size] if group_size else []), n, device="meta")
        return Weights.of(tiles, scale, precision, k)

    def picked(tokens: int, precision: str, gated: bool = False, group_size: int = 0) -> tuple[int, int, int]:
        n, k = (21504, 6144) if gated else (6144, 10752)
        config = moe_config(tokens, 4, experts(precision, n, k, group_size), gated=gated)
        return config.block_n, config.split_k, config.num_stages

    assert picked(1, "int8", gated=True) == (64, 8, 4)
    assert picked(1, "int8") == (256, 4, 3)
    assert picked(1, "int4", gated=True) == (128, 8, 4)
    assert picked(1, "int4") == (256, 4, 4)
    assert picked(1, "int4", group_size=128) == (128, 8, 4)
    assert picked(2, "int8", gated=True) == (64, 2, 4)  # 8 pairs x 168 tiles, the rule at 32 a multiprocessor
    assert picked(2, "int8") == picked(2, "int4") == (128, 8, 4)


NOT_TILES = [GemmConfig(1, 64, 64), GemmConfig(8, 64, 64), GemmConfig(16, 64, 32), GemmConfig(16, 32, 64)]


@pytest.mark.parametrize("precision, group_size, config",
                         [(p, g, c) for p, g in [("int8", None), ("int4", 64)] for c in NOT_TILES]
                         + [(None, None, c) for c in NOT_TILES[:2]],
                         ids=lambda v: config_id(v) if isinstance(v, GemmConfig) else str(v))
def test_int_weights_are_read_in_whole_tiles(precision, group_size, config, device):
    """Tiles of 16 rows and up (tensor cores) for every format; int8 and int4 tiles 64 x 64."""
    w, _ = weights(32, 128, precision, torch.float32, device, seed=0, group_size=group_size)
    x, out = torch.zeros(4, 128, device=device), torch.zeros(4, 32, device=device)
    with pytest.raises(ValueError, match="block_m 16 or more; int8 and int4 weights are read a tile of 64 x 64"):
        gemm(x, w, out, config)


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_int_tiles_need_the_weights_in_features(precision, device):
    """The tiles hold K rounded up to 64: the true K comes from the module, and must fit the tiles."""
    w, _ = weights(32, 100, precision, torch.float32, device, seed=0)
    with pytest.raises(ValueError, match=f"{precision} tiles .* hold K rounded up to 64: give in_features"):
        Weights.of(w.tensor[0], w.scale[0], precision)
    with pytest.raises(ValueError, match=r"hold K rounded up to 64: give in_features \(got 200\)"):
        Weights.of(w.tensor[0], w.scale[0], precision, 200)
    assert Weights.of(w.tensor[0], w.scale[0], precision, 100).k == 100


def test_more_blocks_than_a_grid_takes_are_refused(device):
    """The blocks of rows go on the grid's second dimension, at most 65,535 of them a launch."""
    w, _ = weights(64, 64, None, torch.float32, device, seed=0)
    blocks = 65536
    sorted_ids = torch.zeros(blocks * 16, dtype=torch.int32, device=device)
    moe = (sorted_ids, torch.zeros(blocks, dtype=torch.int32, device=device),
           torch.zeros(1, dtype=torch.int32, device=device), 4)
    x, out = torch.zeros(4, 64, device=device), torch.zeros(4, 64, device=device)
    with pytest.raises(ValueError, match="65536 blocks of 16 rows: at most 65,535 a launch"):
        gemm(x, w, out, GemmConfig(16, 64, 64), moe=moe)


def test_gated_partial_sums_take_both_halves_columns(device):
    """A K split of gate+up writes up's and gate's partial sums apart: [split_k, M, 2N], else refused."""
    w, _ = weights(128, 64, "int4", torch.float32, device, seed=0)
    x = torch.zeros(4, 64, device=device)
    with pytest.raises(ValueError, match=r"out \(2, 4, 64\) for 2 split\(s\) of 128 columns"):
        gemm(x, w, torch.zeros(2, 4, 64, device=device), GemmConfig(16, 64, 64, split_k=2), gated=True)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="the GPU's tile shapes: Hopper's wgmma at 64 columns and up")
@pytest.mark.parametrize("precision, dequant", [(None, 0), ("int8", 1), ("int8", 3), ("int4", 1), ("int4", 3)])
@pytest.mark.parametrize("config", [GemmConfig(32, 128, 64, 1, 4, 3), GemmConfig(32, 128, 64, 1, 8, 3),
                                    GemmConfig(128, 128, 64, 1, 8, 3), GemmConfig(128, 256, 64, 1, 8, 3),
                                    GemmConfig(64, 256, 64, 2, 8, 4), GemmConfig(16, 256, 64, 4, 4, 3)],
                         ids=lambda c: f"bm{c.block_m}bn{c.block_n}w{c.num_warps}s{c.split_k}")
def test_wide_tiles_match_the_float_product(precision, dequant, config, device):
    """The tiles the GPU defaults and the tuner pick (weights as wgmma's first operand, 4 and 8 warps),
    on whole tiles (unmasked loads) and on ragged edges."""
    for n, k, m in [(512, 1024, 200), (320, 600, 37)]:
        w, ref_w = weights(n, k, precision, torch.bfloat16, device, seed=n + m)
        config = replace(config, dequant=dequant)
        assert product_error(m, w, ref_w, config, torch.bfloat16, device) <= BOUND[torch.bfloat16], (n, k, m)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="inline PTX runs on a CUDA GPU only")
@pytest.mark.parametrize("precision", ["int8", "int4"])
@pytest.mark.parametrize("config", [GemmConfig(16, 64, 64, 1, 4, 3, dequant=3), GemmConfig(16, 128, 64, 4, 4, 4, dequant=3),
                                    GemmConfig(64, 64, 64, 2, 4, 3, dequant=3)], ids=["bm16", "bm16-split4", "bm64-split2"])
def test_packed_int_conversion_matches_the_float_product(precision, config, device):
    """DEQ 3: a word's values a few instructions by inline PTX (bfloat16 activations): eight nibbles
    (NIBBLES_TO_BF16), four bytes (BYTES_TO_BF16), every value of both at the extremes."""
    n, k, m = 80, 208, 37
    w, ref_w = weights(n, k, precision, torch.bfloat16, device, seed=7)
    assert product_error(m, w, ref_w, config, torch.bfloat16, device) <= BOUND[torch.bfloat16]
    low, high = (-8, 7) if precision == "int4" else (-128, 127)
    q = torch.arange(low, high + 1, dtype=torch.int8).repeat(64 * 64 // (high - low + 1)).view(64, 64)
    scale = torch.ones(64, dtype=torch.bfloat16)
    q_ckpt = pack_int4(q.T.contiguous()) if precision == "int4" else q.T.contiguous()
    every = Weights.of(engine_weight(q_ckpt, precision).to(device), scale.to(device), precision, 64)
    assert product_error(16, every, q.float(), config, torch.bfloat16, device) <= BOUND[torch.bfloat16]


@pytest.mark.skipif(DEVICE.type != "cuda", reason="inline PTX runs on a CUDA GPU only")
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_packed_int_conversion_is_refused_for_tiles_off_16_bytes(precision, device):
    """The inline PTX takes whole 32-bit words, which Triton hands it where the tiles lie on 16 bytes: tiles
    8 bytes off are refused for DEQ 3 (the default takes DEQ 1 there), and run right with DEQ 1."""
    w, ref_w = weights(64, 64, precision, torch.bfloat16, device, seed=2)
    storage = torch.empty(w.tensor.numel() + 8, dtype=torch.int8, device=device)
    moved = storage[8:].view(w.tensor.shape)
    moved.copy_(w.tensor)
    off = Weights.of(moved, w.scale, precision, 64)
    x = torch.zeros(16, 64, dtype=torch.bfloat16, device=device)
    with pytest.raises(ValueError, match="dequant 3 .* tiles on 16 bytes: use dequant 1"):
        gemm(x, off, torch.empty(16, 64, dtype=torch.bfloat16, device=device), GemmConfig(16, 64, 64, dequant=3))
    assert product_error(16, off, ref_w, GemmConfig(16, 64, 64, dequant=1), torch.bfloat16, device) <= BOUND[
        torch.bfloat16]


@pytest.mark.parametrize("precision, group_size", [("int8", None), ("int4", None), ("int4", 64)])
@pytest.mark.parametrize("rows", [1, 5, 40])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_weight_only_module_swap_computes_the_same_function(precision, group_size, rows, dtype, device):
    """Group-wise int4 too: the tiles of linear_config (a 64-row K chunk lies in one group)."""
    plain = WeightOnlyLinear(192, 96, precision, dtype, group_size)
    q, scale = quantize_weight(torch.randn(96, 192, generator=torch.Generator().manual_seed(rows)).to(dtype),
                               precision, group_size)
    plain.weight.copy_(engine_weight(q, precision))
    plain.scale.copy_(scale)
    swapped = WeightOnlyLinear(192, 96, precision, dtype, group_size).to(device)
    swapped.load_state_dict(plain.state_dict())
    swapped.__class__ = TritonWeightOnlyLinear
    x = torch.randn(1, rows, 192, generator=torch.Generator().manual_seed(0)).to(dtype)
    with torch.no_grad():
        want, got = plain.float()(x.float()), swapped(x.to(device))
    assert got.shape == want.shape and got.dtype == dtype
    assert relative_error(got.cpu(), want) <= BOUND[dtype]
