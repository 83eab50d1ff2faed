"""The fused mixture of experts against the model's per-expert loop: routing,
sorting, SwiGLU and the weighted sum, for float, int8 and int4 experts (int4 per
channel and group-wise)."""

from dataclasses import replace

import pytest
import torch

from dbrx_serve.services.inference.kernels import moe as moe_module
from dbrx_serve.services.inference.kernels.gemm import GemmConfig
from dbrx_serve.services.inference.kernels.moe import FusedMoE, align, expert_weights, route_and_align
from dbrx_serve.shared.config import DbrxConfig
from dbrx_serve.shared.model import LocalShape, MoE
from dbrx_serve.shared.quantization import quantize_weight
from dbrx_serve.shared.weight_only import WeightOnlyExpertLinear, engine_weight

from .conftest import BOUND, DTYPES, relative_error

CFG = DbrxConfig(vocab_size=64, d_model=96, n_heads=4, n_layers=1, kv_n_heads=2, ffn_hidden_size=80,
                 moe_num_experts=6, moe_top_k=3, torch_dtype="float32")
GROUPED_CFG = replace(CFG, d_model=256, ffn_hidden_size=128)  # whole groups of 64 and 128, two or more in fc


def plain_moe(precision: str | None, dtype, seed: int, group_size: int | None = None, cfg: DbrxConfig = CFG) -> MoE:
    torch.manual_seed(seed)
    moe = MoE(cfg, LocalShape.of(cfg))
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.2)
    moe.fc.to(dtype), moe.proj.to(dtype)
    if precision:
        for name in ("fc", "proj"):
            float_weight = getattr(moe, name).weight.data
            q, scale = quantize_weight(float_weight, precision, group_size)
            e, out, inp = float_weight.shape
            halves = 2 if name == "fc" else 1  # gate+up: tiles pad each half
            module = WeightOnlyExpertLinear(e, out, inp, precision, dtype, group_size, halves)
            module.weight.copy_(engine_weight(q, precision, halves)), module.scale.copy_(scale)
            setattr(moe, name, module)
    return moe


@pytest.mark.parametrize("precision, dequant", [(None, 0), ("int8", 0), ("int8", 1), ("int8", 3), ("int4", 0),
                                               ("int4", 1), ("int4", 3)], ids=lambda v: f"{v}")
@pytest.mark.parametrize("tokens", [1, 5, 37])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_moe_matches_the_per_expert_loop(precision, dequant, tokens, dtype, device, monkeypatch):
    """Every way the GEMM turns int weights into floats (gemm.py's DEQ), through both expert GEMMs."""
    if dequant == 3 and (dtype != torch.bfloat16 or device.type != "cuda"):
        pytest.skip("DEQ 3 is int to bfloat16 by inline PTX, on a CUDA GPU")
    config = moe_module.moe_config
    monkeypatch.setattr(moe_module, "moe_config", lambda *a, **kw: replace(config(*a, **kw), dequant=dequant))
    plain = plain_moe(precision, dtype, seed=tokens)
    fused = plain_moe(precision, dtype, seed=tokens).to(device)
    fused.__class__ = FusedMoE
    x = torch.randn(tokens, CFG.d_model, generator=torch.Generator().manual_seed(2)).to(dtype)
    with torch.no_grad():
        want = plain.float()(x.float()) if precision is None else plain(x)
        got = fused(x.to(device))
    assert got.dtype == dtype and relative_error(got.cpu(), want) <= 2 * BOUND[dtype]


@pytest.mark.parametrize("precision", ["int8", "int4"])
@pytest.mark.parametrize("split_k", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_split_k_tiles_match_the_per_expert_loop(precision, split_k, dtype, device, monkeypatch):
    """16-row tiles for both expert GEMMs; split K: gate+up's partial sums come back apart and SwiGLU
    follows their sum (FusedMoE.activation)."""
    config = GemmConfig(16, 64, 64, split_k, num_stages=2, dequant=1)
    monkeypatch.setattr(moe_module, "moe_config", lambda *a, **kw: config)
    plain = plain_moe(precision, dtype, seed=split_k)
    fused = plain_moe(precision, dtype, seed=split_k).to(device)
    fused.__class__ = FusedMoE
    x = torch.randn(5, CFG.d_model, generator=torch.Generator().manual_seed(3)).to(dtype)
    with torch.no_grad():
        want, got = plain(x), fused(x.to(device))
    assert got.dtype == dtype and relative_error(got.cpu(), want) <= 2 * BOUND[dtype]


@pytest.mark.parametrize("group_size, dequant", [(64, 0), (128, 1)], ids=lambda v: f"{v}")
@pytest.mark.parametrize("tokens", [1, 37])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_moe_group_wise_int4_matches_the_per_expert_loop(group_size, dequant, tokens, dtype, device,
                                                                monkeypatch):
    """Group scales in the gated up GEMM and the plain down GEMM, against the plain modules' dequantize;
    one token takes 16-row tiles, a pair a block (K split where the grid is small), 37 taller ones."""
    config = moe_module.moe_config
    monkeypatch.setattr(moe_module, "moe_config", lambda *a, **kw: replace(config(*a, **kw), dequant=dequant))
    plain = plain_moe("int4", dtype, tokens, group_size, GROUPED_CFG)
    fused = plain_moe("int4", dtype, tokens, group_size, GROUPED_CFG).to(device)
    fused.__class__ = FusedMoE
    x = torch.randn(tokens, GROUPED_CFG.d_model, generator=torch.Generator().manual_seed(2)).to(dtype)
    with torch.no_grad():
        want, got = plain(x), fused(x.to(device))
    assert fused.fc.weights_scaling_factor.shape == (6, 256 // group_size, 2 * 128)
    assert (config(tokens, fused.top_k, expert_weights(fused.fc), gated=True).block_m == 16) == (tokens == 1)
    assert got.dtype == dtype and relative_error(got.cpu(), want) <= 2 * BOUND[dtype]


@pytest.mark.parametrize("tokens, offset", [(1, 0), (5, 2), (50, 0), (200, 2)],
                         ids=["one-program", "one-program-two-local", "parts", "cublas-two-local"])
def test_routing_matches_softmax_top_k_and_the_p_norm_and_aligns_as_align(tokens, offset, device, monkeypatch):
    """Up to ROUTE_ALIGN_TOKENS tokens routing and align are one program, up to ROUTER_PARTS_TOKENS the logits
    are our kernels' sums of chunks (here 3 of 32 features, in 4 slots), past it cuBLAS's: the plain path's
    experts and weights each way, and align's blocks of the ids (of this rank's 2 experts at an offset of 2,
    under expert parallelism)."""
    assert (tokens <= moe_module.ROUTE_ALIGN_TOKENS) == (tokens <= 5)  # each path
    assert (tokens <= moe_module.ROUTER_PARTS_TOKENS) == (tokens < 200)
    monkeypatch.setattr(moe_module, "ROUTER_BLOCK_H", 32)  # CFG.d_model 96: three chunks
    moe = plain_moe(None, torch.float32, seed=3)
    x = torch.randn(tokens, CFG.d_model, generator=torch.Generator().manual_seed(4))
    want_w, want_ids = moe.route(x)
    num_local = 2 if offset else CFG.moe_num_experts
    got_w, got_ids, *aligned = route_and_align(x.to(device), moe.router.weight.to(device), CFG.moe_top_k, 1.0,
                                               num_local, offset, 16)
    assert torch.equal(got_ids.cpu().long(), want_ids)
    assert torch.allclose(got_w.cpu(), want_w, atol=1e-6)
    sorted_ids, block_experts, num_sorted = aligned
    want_sorted, want_experts, want_num = align(got_ids, num_local, offset, 16)
    blocks = int(want_num) // 16  # block_experts past the routing hold nothing meaningful
    assert torch.equal(num_sorted, want_num) and torch.equal(sorted_ids, want_sorted)
    assert torch.equal(block_experts[:blocks], want_experts[:blocks])


@pytest.mark.parametrize("block_m", [1, 16])
def test_align_of_no_pairs_sorts_none(block_m, device):
    """No tokens: no slots at all (no padding either), and nothing sorted."""
    sorted_ids, block_experts, num_sorted = align(torch.zeros(0, 3, dtype=torch.int32, device=device), 6, 0,
                                                  block_m)
    assert sorted_ids.numel() == 0 and int(num_sorted) == 0


@pytest.mark.parametrize("tokens, top_k, block_m", [(1, 4, 16), (2, 3, 4), (1, 1, 16)])
def test_align_has_the_slots_of_the_worst_routing_and_no_more(tokens, top_k, block_m, device):
    """Fewer pairs than experts: each pair on an expert of its own pads most, and fills the slots exactly
    (one token, top-4 of 16 experts at 16 rows a block: 4 blocks, not 16)."""
    ids = torch.arange(tokens * top_k, dtype=torch.int32).view(tokens, top_k)  # every pair its own expert
    sorted_ids, block_experts, num_sorted = align(ids.to(device), 16, 0, block_m)
    assert sorted_ids.numel() == int(num_sorted) == tokens * top_k * block_m
    assert block_experts.cpu().tolist() == list(range(tokens * top_k))


@pytest.mark.parametrize("offset, num_local, tokens", [(0, 6, 23), (2, 2, 23), (0, 6, 200)],
                         ids=["all-local", "two-local", "two-passes"])
def test_align_sorts_pairs_by_expert_in_padded_blocks(offset, num_local, tokens, device):
    """One pass of each loop up to 512 slots; 600 pairs take two."""
    ids = torch.randint(0, 6, (tokens, 3), generator=torch.Generator().manual_seed(5), dtype=torch.int32)
    sorted_ids, block_experts, num_sorted = (t.cpu() for t in align(ids.to(device), num_local, offset, 4))
    flat, n = ids.flatten(), int(num_sorted)
    assert n % 4 == 0 and (sorted_ids[n:] == flat.numel()).all()
    for e in range(num_local):
        pairs = torch.nonzero(flat == offset + e).flatten()  # this expert's pairs, in order
        blocks = torch.nonzero(block_experts[:n // 4] == e).flatten()
        got = sorted_ids.view(-1, 4)[blocks].flatten()
        assert got[got < flat.numel()].tolist() == pairs.tolist()
        assert len(blocks) == -(-len(pairs) // 4)
