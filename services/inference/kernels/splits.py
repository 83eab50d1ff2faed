"""The K-split partial sums of gemm.py (and the experts' top-k outputs) added up in one launch.

    sum_splits(parts, dtype)                      [S, M, N] float32 -> [M, N] dtype
    sum_splits(parts, dtype, gated=True)          [S, M, 2F] -> [M, F]: up * silu(gate) of the sums
    sum_splits(parts, dtype, rows_per_out=K)      [S, M*K, N] -> [M, N]: each token's K rows summed too

Each replaces a chain of torch launches at decode sizes (a sum, a cast, SiLU and a product: 2-4 us
each, four a layer's step at batch 1).
"""

import torch
import triton
import triton.language as tl

from .device import pdl, wait_for_inputs

BLOCK = 512  # columns a program


@triton.jit
def sum_splits_kernel(parts_ptr, out_ptr, N, stride_s, stride_m, stride_out, half, SPLITS: tl.constexpr,
                      ROWS: tl.constexpr, GATED: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """Output row m, columns of program 1: the sum over SPLITS splits and ROWS rows (m * ROWS ...) of
    parts, in float32, in that order; GATED: SwiGLU of the sums of columns c (up) and half + c (gate).
    Both loops unrolled: every load is asked for before the first add waits on one."""
    wait_for_inputs(PDL)
    m = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    gate = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLITS):
        for r in tl.static_range(ROWS):
            row = parts_ptr + s * stride_s + (m * ROWS + r) * stride_m + cols
            acc += tl.load(row, mask=ok, other=0.0).to(tl.float32)
            if GATED:
                gate += tl.load(row + half, mask=ok, other=0.0).to(tl.float32)
    if GATED:  # DBRX's SwiGLU, as gemm.py's _finish: up * silu(gate)
        acc = acc * (gate / (1.0 + tl.exp(-gate)))
    tl.store(out_ptr + m * stride_out + cols, acc.to(out_ptr.dtype.element_ty), mask=ok)


def sum_splits(parts: torch.Tensor, dtype: torch.dtype, gated: bool = False, rows_per_out: int = 1) -> torch.Tensor:
    """parts [S, R, W] (any float dtype, last dimension contiguous) -> [R / rows_per_out, W (/ 2 gated)]."""
    splits, rows, width = parts.shape
    if parts.stride(2) != 1 or rows % rows_per_out or (gated and width % 2):
        raise ValueError(f"sum_splits takes [S, R, W] with a contiguous last dimension, R a multiple of "
                         f"{rows_per_out}{' and W even (gate+up)' if gated else ''}: got {tuple(parts.shape)}")
    n = width // 2 if gated else width
    out = torch.empty(rows // rows_per_out, n, dtype=dtype, device=parts.device)
    grid = (out.shape[0], triton.cdiv(n, BLOCK))
    sum_splits_kernel[grid](parts, out, n, parts.stride(0), parts.stride(1), out.stride(0), n, SPLITS=splits,
                            ROWS=rows_per_out, GATED=gated, BLOCK=BLOCK, num_warps=4, **pdl(parts))
    return out
