"""LayerNorm (norm.py) and the sums of K-split partials (splits.py) against their plain torch forms."""

import pytest
import torch
import torch.nn.functional as F

from dbrx_serve.services.inference.kernels.norm import TritonLayerNorm, TritonResidualLayerNorm
from dbrx_serve.services.inference.kernels.splits import sum_splits
from dbrx_serve.shared.model import ResidualLayerNorm

from .conftest import BOUND, DTYPES, relative_error


@pytest.mark.parametrize("rows, width", [(1, 6144), (5, 96), (3, 100)], ids=["dbrx-row", "rows", "ragged"])
@pytest.mark.parametrize("bias", [False, True], ids=["", "bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_layer_norm_matches_torch(rows, width, bias, dtype, device):
    g = torch.Generator().manual_seed(width + rows)
    plain = torch.nn.LayerNorm(width, eps=1e-5, bias=bias)
    with torch.no_grad():
        plain.weight.copy_(torch.randn(width, generator=g))
        if bias:
            plain.bias.copy_(torch.randn(width, generator=g))
    ours = torch.nn.LayerNorm(width, eps=1e-5, bias=bias, dtype=dtype).to(device)
    ours.load_state_dict(plain.state_dict())
    ours.__class__ = TritonLayerNorm
    x = (3 + 2 * torch.randn(2, rows, width, generator=g)).to(dtype)  # an offset: the mean matters
    with torch.no_grad():
        got, want = ours(x.to(device)), plain(x.float())
    assert got.shape == x.shape and got.dtype == dtype
    assert relative_error(got.cpu(), want) <= BOUND[dtype]


@pytest.mark.parametrize("rows, width", [(1, 6144), (3, 100)], ids=["dbrx-row", "ragged"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_residual_layer_norm_matches_the_sum_then_torch(rows, width, dtype, device):
    """x + delta as torch rounds it to the dtype (exactly), and the LayerNorm of that rounded sum."""
    g = torch.Generator().manual_seed(width + rows + 1)
    plain = ResidualLayerNorm(width, eps=1e-5, bias=False)
    with torch.no_grad():
        plain.weight.copy_(torch.randn(width, generator=g))
    ours = ResidualLayerNorm(width, eps=1e-5, bias=False, dtype=dtype).to(device)
    ours.load_state_dict(plain.state_dict())
    ours.__class__ = TritonResidualLayerNorm
    x, delta = ((3 + 2 * torch.randn(2, rows, width, generator=g)).to(dtype) for _ in range(2))
    with torch.no_grad():
        got_sum, got = ours(x.to(device), delta.to(device))
        want_sum = x + delta
        _, want = plain(want_sum.float(), torch.zeros(want_sum.shape))
    assert got_sum.dtype == got.dtype == dtype and got.shape == x.shape
    assert torch.equal(got_sum.cpu(), want_sum)
    assert relative_error(got.cpu(), want) <= BOUND[dtype]


def test_residual_layer_norm_takes_strided_rows_and_leaves_the_rest_to_torch(device):
    """Rows of stride > 1 (a transposed view) as the same rows contiguous; a delta that broadcasts, and a
    LayerNorm without weights, as torch's sum and F.layer_norm (the same pair back)."""
    g = torch.Generator().manual_seed(5)
    ours = ResidualLayerNorm(64, eps=1e-5, bias=False).to(device)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(64, generator=g))
    ours.__class__ = TritonResidualLayerNorm
    x, delta = torch.randn(64, 3, generator=g).to(device), torch.randn(3, 64, generator=g).to(device)
    with torch.no_grad():
        got = ours(x.t(), delta)  # x.t(): rows of stride 3
        want = ours(x.t().contiguous(), delta)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
        h, normed = ours(x.t().contiguous(), delta[:1])  # a delta that broadcasts
        assert torch.equal(h, x.t() + delta[:1])
        assert torch.allclose(normed, F.layer_norm(h, (64,), ours.weight, eps=1e-5))
        plain = ResidualLayerNorm(64, elementwise_affine=False).to(device)
        plain.__class__ = TritonResidualLayerNorm
        h, normed = plain(x.t(), delta)
        assert torch.equal(h, x.t() + delta) and torch.allclose(normed, F.layer_norm(x.t() + delta, (64,)))


def test_residual_layer_norm_without_a_delta_is_the_layer_norm_of_x(device):
    """A model's first block has no delta: x itself back, and the LayerNorm's kernel on it."""
    g = torch.Generator().manual_seed(6)
    ours = ResidualLayerNorm(96, eps=1e-5, bias=False).to(device)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(96, generator=g))
    ours.__class__ = TritonResidualLayerNorm
    x = 3 + torch.randn(2, 4, 96, generator=g).to(device)
    with torch.no_grad():
        h, normed = ours(x, None)
    assert h is x
    assert relative_error(normed.cpu(), F.layer_norm(x.cpu(), (96,), ours.weight.cpu(), eps=1e-5)) <= BOUND[torch.float32]


@pytest.mark.parametrize("splits, rows_per_out, gated", [(1, 1, False), (4, 1, False), (3, 1, True), (2, 4, False),
                                                        (1, 4, False)],
                         ids=["one", "splits", "swiglu", "topk-splits", "topk"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sum_splits_matches_the_torch_chain(splits, rows_per_out, gated, dtype, device):
    """The K splits summed (and each token's top-k rows, and SwiGLU of gate+up), as FusedMoE and the
    weight-only linear layers used to in torch: sum, SiLU, product, cast."""
    parts = torch.randn(splits, 3 * rows_per_out, 2 * 600, generator=torch.Generator().manual_seed(splits))
    got = sum_splits(parts.to(device), dtype, gated=gated, rows_per_out=rows_per_out)
    summed = parts.view(splits, 3, rows_per_out, -1).sum((0, 2))
    up, gate = summed.chunk(2, dim=-1)
    want = up * F.silu(gate) if gated else summed
    assert got.shape == want.shape and got.dtype == dtype
    assert relative_error(got.cpu(), want) <= BOUND[dtype]


@pytest.mark.parametrize("gated", [False, True], ids=["down", "swiglu"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sum_splits_scales_each_rows_sum_by_its_experts_scale(gated, dtype, device):
    """Bare K-split sums (gemm.py leaves the scale and the router weight to their sum): each row's sum
    times the per-channel scale of its expert (ids less the rank's first expert; a row of another rank's
    expert counts zero), down's times its router weight, then each token's top-k rows (down) or SwiGLU
    (gate+up)."""
    g = torch.Generator().manual_seed(7)
    splits, tokens, k, width, local, offset = 3, 2, 1 if gated else 4, 2 * 300, 4, 8
    parts = torch.randn(splits, tokens * k, width, generator=g)
    scale = torch.rand(local, width, generator=g) + 0.5
    ids = torch.tensor([3, 8, 11, 9, 10, 8, 12, 11][:tokens * k], dtype=torch.int32)  # 3 and 12: another rank's
    weights = torch.rand(tokens * k, generator=g)
    expert = ids.long() - offset
    mine = (expert >= 0) & (expert < local)
    rows = parts.sum(0) * torch.where(mine[:, None], scale[expert.clamp(0, local - 1)], 0.0)
    extra = {} if gated else dict(row_weights=weights.to(device))
    got = sum_splits(parts.to(device), dtype, gated=gated, rows_per_out=k, scale=scale.to(device),
                     experts=ids.to(device), expert_offset=offset, **extra)
    if gated:
        up, gate = rows.chunk(2, dim=-1)
        want = up * F.silu(gate)
    else:
        want = (rows * weights[:, None]).view(tokens, k, width).sum(1)
    assert not mine.all() and got.shape == want.shape and got.dtype == dtype
    assert relative_error(got.cpu(), want) <= BOUND[dtype]


def test_sum_splits_refuses_what_it_cannot_sum(device):
    with pytest.raises(ValueError, match="R a multiple of 4"):
        sum_splits(torch.zeros(2, 6, 8, device=device), torch.float32, rows_per_out=4)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        sum_splits(torch.zeros(2, 8, 6, device=device).transpose(1, 2), torch.float32)
    parts = torch.zeros(2, 4, 8, device=device)
    experts = torch.zeros(4, dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match=r"scale is the experts' \[E, 8\].* with each of the 4 rows' expert: got "
                                         r"\(3, 8\) and no experts"):
        sum_splits(parts, torch.float32, scale=torch.ones(3, 8, device=device))
    with pytest.raises(ValueError, match=r"got \(6,\) and 4 experts"):
        sum_splits(parts, torch.float32, scale=torch.ones(6, device=device), experts=experts)
    with pytest.raises(ValueError, match=r"got \(3, 8\) and 3 experts"):
        sum_splits(parts, torch.float32, scale=torch.ones(3, 8, device=device), experts=experts[:3])
    with pytest.raises(ValueError, match=r"not of SwiGLU's halves.*got \(4,\) for gate\+up"):
        sum_splits(parts, torch.float32, gated=True, row_weights=torch.ones(4, device=device))
    with pytest.raises(ValueError, match=r"the 4 rows .* by as many contiguous weights: got \(3,\)"):
        sum_splits(parts, torch.float32, row_weights=torch.ones(3, device=device))
