"""The K-split partial sums of gemm.py (and the experts' top-k outputs) added up in one launch.

    sum_splits(parts, dtype)                      [S, M, N] float32 -> [M, N] dtype
    sum_splits(parts, dtype, gated=True)          [S, M, 2F] -> [M, F]: up * silu(gate) of the sums
    sum_splits(parts, dtype, rows_per_out=K)      [S, M*K, N] -> [M, N]: each token's K rows summed too

gemm.py leaves an expert GEMM's split partial sums bare; their sum applies what its last step would
have: `scale`, the experts' per-channel scales [E, N] (row r's expert is `experts[r]` - `expert_offset`;
a row of another rank's expert counts zero), and `row_weights`, each row's router weight. Each replaces a
chain of torch launches at decode sizes (a sum, a cast, SiLU and a product: 2-4 us each, four a layer's
step at batch 1).
"""

import torch
import triton
import triton.language as tl

from .device import pdl, wait_for_inputs

BLOCK = 512  # columns a program


@triton.jit
def sum_splits_kernel(parts_ptr, out_ptr, scale_ptr, experts_ptr, weights_ptr, N, stride_s, stride_m, stride_out,
                      half, stride_se, expert_offset, num_experts, SPLITS: tl.constexpr, ROWS: tl.constexpr,
                      GATED: tl.constexpr, SCALED: tl.constexpr, WEIGHTED: tl.constexpr, BLOCK: tl.constexpr,
                      PDL: tl.constexpr):
    """Output row m, columns of program 1: for each of ROWS rows (m * ROWS ...) the sum of its SPLITS
    parts in order, times its expert's scale (SCALED) and its weight (WEIGHTED), added up in float32;
    GATED: SwiGLU of the sums of columns c (up) and half + c (gate). Both loops unrolled: every load is
    asked for before the first add waits on one."""
    wait_for_inputs(PDL)
    m = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    gate = tl.zeros((BLOCK,), dtype=tl.float32)
    for r in tl.static_range(ROWS):
        row = m * ROWS + r
        up_r = tl.zeros((BLOCK,), dtype=tl.float32)
        gate_r = tl.zeros((BLOCK,), dtype=tl.float32)
        for s in tl.static_range(SPLITS):
            part = parts_ptr + s * stride_s + row * stride_m + cols
            up_r += tl.load(part, mask=ok, other=0.0).to(tl.float32)
            if GATED:
                gate_r += tl.load(part + half, mask=ok, other=0.0).to(tl.float32)
        if SCALED:
            expert = tl.load(experts_ptr + row).to(tl.int64) - expert_offset
            scale_ok = ok & (expert >= 0) & (expert < num_experts)
            scales = scale_ptr + expert * stride_se + cols
            up_r *= tl.load(scales, mask=scale_ok, other=0.0).to(tl.float32)
            if GATED:
                gate_r *= tl.load(scales + half, mask=scale_ok, other=0.0).to(tl.float32)
        if WEIGHTED:
            up_r *= tl.load(weights_ptr + row).to(tl.float32)
        acc += up_r
        gate += gate_r
    if GATED:  # DBRX's SwiGLU, as gemm.py's _finish: up * silu(gate)
        acc = acc * (gate / (1.0 + tl.exp(-gate)))
    tl.store(out_ptr + m * stride_out + cols, acc.to(out_ptr.dtype.element_ty), mask=ok)


def sum_splits(parts: torch.Tensor, dtype: torch.dtype, gated: bool = False, rows_per_out: int = 1,
               scale: torch.Tensor | None = None, experts: torch.Tensor | None = None, expert_offset: int = 0,
               row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """parts [S, R, W] (any float dtype, last dimension contiguous) -> [R / rows_per_out, W (/ 2 gated)];
    scale [E, W] with experts [R], row_weights [R] (see the module's docstring)."""
    splits, rows, width = parts.shape
    if parts.stride(2) != 1 or rows % rows_per_out or (gated and width % 2):
        raise ValueError(f"sum_splits takes [S, R, W] with a contiguous last dimension, R a multiple of "
                         f"{rows_per_out}{' and W even (gate+up)' if gated else ''}: got {tuple(parts.shape)}")
    if row_weights is not None and (gated or row_weights.numel() != rows or not row_weights.is_contiguous()):
        raise ValueError(f"sum_splits weighs the {rows} rows of a plain sum (not of SwiGLU's halves) by as many "
                         f"contiguous weights: got {tuple(row_weights.shape)}{' for gate+up' if gated else ''}")
    if scale is not None and (scale.dim() != 2 or scale.shape[1] != width or scale.stride(1) != 1
                              or experts is None or experts.numel() != rows or not experts.is_contiguous()):
        raise ValueError(f"sum_splits' scale is the experts' [E, {width}], its last dimension contiguous, with each "
                         f"of the {rows} rows' expert: got {tuple(scale.shape)} and "
                         f"{'no experts' if experts is None else f'{experts.numel()} experts'}")
    n = width // 2 if gated else width
    out = torch.empty(rows // rows_per_out, n, dtype=dtype, device=parts.device)
    grid = (out.shape[0], triton.cdiv(n, BLOCK))
    scaled = scale is not None
    sum_splits_kernel[grid](parts, out, scale if scaled else parts, experts if scaled else parts,
                            row_weights if row_weights is not None else parts, n, parts.stride(0), parts.stride(1),
                            out.stride(0), n, scale.stride(0) if scaled else 0, expert_offset,
                            scale.shape[0] if scaled else 0, SPLITS=splits, ROWS=rows_per_out, GATED=gated,
                            SCALED=scaled, WEIGHTED=row_weights is not None, BLOCK=BLOCK, num_warps=4, **pdl(parts))
    return out
