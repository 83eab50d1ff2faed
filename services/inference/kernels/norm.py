"""LayerNorm on CUDA in one launch: one program a row, the row in registers; after attention, the
residual sum and its LayerNorm in one (the model's ResidualLayerNorm).

At decode sizes torch's LayerNorm took 10.4 us a call for one row of 6,144 (81 calls a step of
the 40-layer model: 0.84 ms of its GPU time, bench/results/decode_int4_g128_40L_half2.json); this
kernel reads the row once and writes it once (with the residual: two rows read, two written).
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import nn

from dbrx_serve.shared.model import ResidualLayerNorm

from .device import pdl, wait_for_inputs


@triton.jit
def layer_norm_kernel(x_ptr, delta_ptr, weight_ptr, bias_ptr, sum_ptr, out_ptr, N, stride_x, stride_delta,
                      stride_sum, stride_out, eps, RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr,
                      BLOCK: tl.constexpr, PDL: tl.constexpr):
    """(x - mean) / sqrt(var + eps) * weight (+ bias) of row `program_id`, in float32 (as torch's).
    RESIDUAL: x + delta first, rounded to the rows' dtype (as torch's sum) and stored to sum_ptr."""
    wait_for_inputs(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < N
    x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0)
    if RESIDUAL:
        x = (x.to(tl.float32) + tl.load(delta_ptr + row * stride_delta + cols, mask=ok, other=0.0).to(tl.float32))
        x = x.to(sum_ptr.dtype.element_ty)
        tl.store(sum_ptr + row * stride_sum + cols, x, mask=ok)
    x = x.to(tl.float32)
    centered = tl.where(ok, x - tl.sum(x, axis=0) / N, 0.0)
    y = centered * tl.rsqrt(tl.sum(centered * centered, axis=0) / N + eps)
    y = y * tl.load(weight_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=ok)


def layer_norm(norm: nn.LayerNorm, x: torch.Tensor, delta: torch.Tensor | None = None):
    """The kernel over the last dimension: LayerNorm(x), or with delta (x's shape and dtype) (x + delta,
    LayerNorm of it). Rows of up to 2^16 features; wider ones, a LayerNorm without weights and a delta
    that broadcasts or promotes take torch's."""
    n = x.shape[-1]
    block = triton.next_power_of_2(n)
    odd_delta = delta is not None and (delta.shape != x.shape or delta.dtype != x.dtype)
    if not norm.elementwise_affine or block > 65536 or odd_delta:
        h = x if delta is None else x + delta
        out = F.layer_norm(h, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        return out if delta is None else (h, out)
    rows = x.reshape(-1, n).contiguous()  # the kernel reads and writes rows of stride 1
    deltas = rows if delta is None else delta.reshape(-1, n).contiguous()
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    sums = out if delta is None else torch.empty_like(out)
    layer_norm_kernel[(rows.shape[0],)](rows, deltas, norm.weight, norm.weight if norm.bias is None else norm.bias,
                                        sums, out, n, rows.stride(0), deltas.stride(0), sums.stride(0),
                                        out.stride(0), norm.eps, RESIDUAL=delta is not None,
                                        HAS_BIAS=norm.bias is not None, BLOCK=block,
                                        num_warps=min(16, max(4, block // 512)), **pdl(rows))
    return out.view(x.shape) if delta is None else (sums.view(x.shape), out.view(x.shape))


class TritonLayerNorm(nn.LayerNorm):
    """nn.LayerNorm, same parameters; `forward` runs layer_norm_kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(self, x)


class TritonResidualLayerNorm(ResidualLayerNorm):
    """The model's ResidualLayerNorm, same parameters; `forward` is one layer_norm_kernel launch."""

    def forward(self, x: torch.Tensor, delta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return (x, layer_norm(self, x)) if delta is None else layer_norm(self, x, delta)
