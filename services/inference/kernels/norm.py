"""LayerNorm on CUDA in one launch: one program a row, the row in registers.

At decode sizes torch's LayerNorm took 10.4 us a call for one row of 6,144 (81 calls a step of
the 40-layer model: 0.84 ms of its GPU time, bench/results/decode_int4_g128_40L_half2.json); this
kernel reads the row once and writes it once.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import nn


@triton.jit
def layer_norm_kernel(x_ptr, weight_ptr, bias_ptr, out_ptr, N, stride_x, stride_out, eps,
                      HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """(x - mean) / sqrt(var + eps) * weight (+ bias) of row `program_id`, in float32 (as torch's)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < N
    x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    centered = tl.where(ok, x - tl.sum(x, axis=0) / N, 0.0)
    y = centered * tl.rsqrt(tl.sum(centered * centered, axis=0) / N + eps)
    y = y * tl.load(weight_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=ok)


class TritonLayerNorm(nn.LayerNorm):
    """nn.LayerNorm, same parameters; `forward` runs the kernel over the last dimension (rows of up to
    2^16 features; wider ones take torch's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1]
        block = triton.next_power_of_2(n)
        if not self.elementwise_affine or block > 65536:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        rows = x.reshape(-1, n)
        out = torch.empty_like(rows)
        layer_norm_kernel[(rows.shape[0],)](rows, self.weight, self.bias if self.bias is not None else self.weight,
                                            out, n, rows.stride(0), out.stride(0), self.eps,
                                            HAS_BIAS=self.bias is not None, BLOCK=block,
                                            num_warps=min(16, max(4, block // 512)))
        return out.view(x.shape)
