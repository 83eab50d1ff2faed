"""One Triton GEMM for every linear layer of the engine on CUDA: the attention
projections and the experts, in bf16/fp16/fp32 or weight-only int8/int4.

    out[m, n] = sum_k x[row(m), k] * W[e(m), k, n]  (* scale[e, n])  (* router weight)

Weights are read as the engine stores them (docs/trtllm-checkpoint.md, "Engine
directory"): float [E, N, K] (nn.Linear's [out, in]); int8 and int4 in tiles of
64 x 64 in the tensor cores' register order [E, N'/64, K'/64, 4096 or 2048]
(shared/tiles.py); a per-channel scale [E, N] is applied once, after the
K loop; group-wise int4 scales [E, K/GROUP, N] inside it, one product per
BLOCK_K chunk (BLOCK_K divides GROUP, so a chunk lies in one group). Small batches are
bandwidth-bound, so how int weights become floats is a choice
(`GemmConfig.dequant`, measured by bench/gemm_tune.py). Tiles of 16 rows and
up (gemm_kernel) compute the output transposed, out^T = W^T x^T: the weights are the tensor-core MMA's
first operand, so on Hopper wgmma takes 64 of their columns at a time straight from the registers where
they were dequantized, and the tokens (16 to 128 a tile) are its second. Every batch takes these tiles
(one token: K split). `linear_config` and
`moe_config` launch the engine's tuned configuration for the shape and batch
where it stores one (tuning.py), else the default tiles below.

For the experts (`moe=True`) rows come sorted by expert and padded to blocks of
BLOCK_M (moe.py's `align`): `sorted_ids[i]` is a (token, slot) pair index, P
(the number of pairs) marks padding, and `block_experts[b]` is the expert of
block b. The grid covers the most blocks any routing can need and blocks past
`num_sorted` return at once, so the launch never depends on the routing (no host
sync, CUDA-graph safe). `gated` fuses DBRX's SwiGLU: the weight holds [up; gate]
along N and the kernel writes up * silu(gate). `split_k` > 1 writes float32
partial sums [split_k, M, N] that the caller adds up (gated: up's and gate's
apart, [split_k, M, 2N]: SwiGLU comes after their sum); the experts' are the
bare sums over each split's K rows, without the per-channel scale and the router
weight, which their sum applies once (splits.py's sum_splits, given each row's
expert), so that a program's last step stores without waiting on a load.
"""

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from dbrx_serve.shared.weight_only import WeightOnlyLinear

from .device import capability, num_sms, on_nvidia, pdl, wait_for_inputs
from .splits import sum_splits
from .tuning import ACTIVE, LINEAR, MOE_DOWN, MOE_UP, TILES, GemmConfig, shape_key

FLOAT, INT8, INT4 = 0, 1, 2
SHARED_MEMORY_BYTES = 160 * 1024  # what the pipeline stages of one program may take (the H200 has 227 KB)
FORMATS = {"int8": INT8, "int4": INT4}
BITS = {INT8: 8, INT4: 4}


@triton.jit
def _to_float(u, BIAS: tl.constexpr, DTYPE: tl.constexpr):
    """Unsigned ints u < 2^23 (int32) -> u - BIAS in DTYPE, by placing u in a float32's mantissa
    (bits 0x4B000000 | u is 2^23 + u): bit operations and one subtraction, no int-to-float conversion."""
    return ((u | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + BIAS)).to(DTYPE)


# DEQ 3 (bfloat16 only, CUDA only): a word of an int4 tile (shared/tiles.py: eight offset-binary
# nibbles, the two values of output register p at bits 4p and 16 + 4p) becomes eight bfloat16 values with
# 11 instructions: the word shifted by 4p, its two nibbles or'ed under 0x4300 (bf16 128 + u, lop3
# (a & b) | c = 0xEA), then 128 + u - 136 = u - 8 by one fma.bf16x2. Outputs: values j = 0 ($0, $1) and
# j = 1 ($2, $3) of the word $4, in the order 2h + e.
NIBBLES_TO_BF16 = tl.constexpr("""{
.reg .b32 t, m, o, one, bias;
mov.b32 m, 0x000F000F; mov.b32 o, 0x43004300;
mov.b32 one, 0x3F803F80; mov.b32 bias, 0xC308C308;
lop3.b32 t, $4, m, o, 0xEA; fma.rn.bf16x2 $0, t, one, bias;
shr.u32 t, $4, 4; lop3.b32 t, t, m, o, 0xEA; fma.rn.bf16x2 $1, t, one, bias;
shr.u32 t, $4, 8; lop3.b32 t, t, m, o, 0xEA; fma.rn.bf16x2 $2, t, one, bias;
shr.u32 t, $4, 12; lop3.b32 t, t, m, o, 0xEA; fma.rn.bf16x2 $3, t, one, bias;
}""")


@triton.jit
def _nibbles(packed, DEQ: tl.constexpr, DTYPE: tl.constexpr):
    """Bytes [R, C] of int4 tiles' words -> (values j = 0, values j = 1) [R, C] in DTYPE, each word's four
    in the order 2h + e (shared/tiles.py)."""
    if DEQ == 3:
        j0, j1 = tl.inline_asm_elementwise(NIBBLES_TO_BF16, "=r,=r,=r,=r,r", [packed],
                                           dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
    else:
        R: tl.constexpr = packed.shape[0]
        C: tl.constexpr = packed.shape[1]
        b0, b1 = tl.split(tl.reshape(packed.to(tl.int32) & 0xFF, (R, C // 4, 2, 2)))  # byte 2e + j: j 0, 1
        u0 = tl.reshape(tl.permute(tl.join(b0 & 0xF, b0 >> 4), (0, 1, 3, 2)), (R, C))  # (e, h) -> 2h + e
        u1 = tl.reshape(tl.permute(tl.join(b1 & 0xF, b1 >> 4), (0, 1, 3, 2)), (R, C))
        if DEQ == 0:
            j0, j1 = (u0 - 8).to(DTYPE), (u1 - 8).to(DTYPE)
        else:
            j0, j1 = _to_float(u0, 8, DTYPE), _to_float(u1, 8, DTYPE)
    return j0, j1


# DEQ 3 for int8 (bfloat16 only, CUDA only): a word of an int8 tile (shared/tiles.py: four offset-binary bytes,
# byte 2h + e the half e of register h) becomes four bfloat16 values with 10 instructions: each byte under
# the exponent of 2^23 (prmt), 2^23 + 128 taken off (exact), pairs packed by cvt. Outputs: the word's values
# in byte order ($0: bytes 0, 1; $1: bytes 2, 3), in place.
BYTES_TO_BF16 = tl.constexpr("""{
.reg .b32 f0, f1, f2, f3, magic;
mov.b32 magic, 0x4B000000;
prmt.b32 f0, $2, magic, 0x7650; prmt.b32 f1, $2, magic, 0x7651;
prmt.b32 f2, $2, magic, 0x7652; prmt.b32 f3, $2, magic, 0x7653;
sub.f32 f0, f0, 0f4B000080; sub.f32 f1, f1, 0f4B000080; sub.f32 f2, f2, 0f4B000080; sub.f32 f3, f3, 0f4B000080;
cvt.rn.bf16x2.f32 $0, f1, f0; cvt.rn.bf16x2.f32 $1, f3, f2;
}""")


@triton.jit
def _bytes(packed, DEQ: tl.constexpr, DTYPE: tl.constexpr):
    """Bytes of int8 tiles (offset binary) -> their values in DTYPE, in place."""
    if DEQ == 3:
        return tl.inline_asm_elementwise(BYTES_TO_BF16, "=r,=r,r", [packed], dtype=tl.bfloat16, is_pure=True,
                                         pack=4)
    u = packed.to(tl.int32) & 0xFF
    if DEQ == 0:
        return (u - 128).to(DTYPE)
    return _to_float(u, 128, DTYPE)


@triton.jit
def _tile(ptrs, mask, FMT: tl.constexpr, DEQ: tl.constexpr, DTYPE: tl.constexpr, BLOCK_N: tl.constexpr):
    """A [BLOCK_N, 64] tile of int8 or int4 W in DTYPE from BLOCK_N / 64 of its tiles (shared/tiles.py),
    read as rows of 512 bytes, 16 bytes a lane: int4 a row per (tile, warp), a word a K step; int8 a row
    per (tile, half, warp), a word a K step's register pair. The values (_nibbles, _bytes) reshaped and
    permuted back to (row, column) order. The bytes a thread loads are the values wgmma wants in its
    registers, so on Hopper the permutation moves nothing."""
    packed = tl.load(ptrs, mask=mask, other=0)  # masked: rows past N, never stored
    if FMT == 2:
        j0, j1 = _nibbles(packed, DEQ, DTYPE)
        v = tl.reshape(tl.join(j0, j1), (BLOCK_N // 64, 4, 8, 4, 4, 2, 2, 2))  # tile w g t s h e j
        v = tl.permute(v, (0, 1, 5, 2, 4, 7, 3, 6))  # rows (tile, w, h, g), columns (s, j, t, e)
    else:
        v = tl.reshape(_bytes(packed, DEQ, DTYPE), (BLOCK_N // 64, 2, 4, 8, 4, 4, 2, 2))  # tile c w g t (s' j) h e
        v = tl.permute(v, (0, 2, 6, 3, 1, 5, 4, 7))  # rows (tile, w, h, g), columns (c, s' j, t, e)
    return tl.reshape(v, (BLOCK_N, 64))


@triton.jit
def _waited(acc, PTX: tl.constexpr):
    """acc read by an identity: Triton then waits for this step's wgmma before the next step rewrites the
    registers they read their weights from. Triton 3.6 lets them run on across steps (a race where the
    first operand comes from registers: triton-lang/triton#9433; wrong sums at 3 pipeline stages in
    bench/results/gemm_int4_tiles_probe.json)."""
    if PTX:
        acc = tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [acc], dtype=tl.float32, is_pure=True, pack=1)
    return acc


@triton.jit
def _finish(acc, gate, cols, rows, row_ok, expert, scale_ptr, stride_se, stride_sn, gate_offset, topk_weights_ptr,
            out_ptrs, stride_on, N, SCALED: tl.constexpr, GATED: tl.constexpr, WEIGHTED: tl.constexpr):
    """acc [columns, rows] (the output transposed): per-channel scales (once per tile), SwiGLU, the
    router weight; store the columns `cols` of the rows `rows`."""
    n_ok = cols < N
    if SCALED:
        s_ptrs = scale_ptr + expert * stride_se + cols * stride_sn
        acc *= tl.load(s_ptrs, mask=n_ok, other=0.0).to(tl.float32)[:, None]
        if GATED:
            gate *= tl.load(s_ptrs + gate_offset * stride_sn, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    if GATED:  # DBRX's SwiGLU: up * silu(gate)
        acc = acc * (gate / (1.0 + tl.exp(-gate)))
    if WEIGHTED:
        acc *= tl.load(topk_weights_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptrs + cols[:, None] * stride_on, acc.to(out_ptrs.dtype.element_ty),
             mask=n_ok[:, None] & row_ok[None, :])


@triton.jit
def _block(pid_m, pid_k, sorted_ids_ptr, block_experts_ptr, num_sorted_ptr, M, K, num_pairs, k_per_split,
           MOE: tl.constexpr, BLOCK_M: tl.constexpr):
    """What program (pid_m, pid_k) works on: its rows (pair indices for the experts, num_pairs on
    padding), which of them are real, their expert, and its K range (empty past the routing)."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    if MOE:
        rows = tl.load(sorted_ids_ptr + offs_m)
        row_ok = rows < num_pairs
        expert = tl.load(block_experts_ptr + pid_m).to(tl.int64)
        if pid_m * BLOCK_M >= tl.load(num_sorted_ptr):  # a block past the routing: no K loop, no store
            k_end = k_start
            row_ok = rows < 0
            expert = expert * 0  # block_experts holds nothing meaningful here
    else:
        rows = offs_m
        row_ok = rows < M
        expert = 0
    return rows, row_ok, expert, k_start, k_end


@triton.jit
def _dot(w, x, acc, k, s_ptrs, s_ok, stride_sg, GROUP: tl.constexpr, PRECISION: tl.constexpr):
    """acc + w @ x (a weight tile [N, K] times x transposed [K, M]); group-wise
    (GROUP > 0): the chunk at K offset k alone, times its group's scales."""
    if GROUP == 0:
        return tl.dot(w, x, acc, input_precision=PRECISION)
    scale = tl.load(s_ptrs + (k // GROUP) * stride_sg, mask=s_ok, other=0.0).to(tl.float32)
    return acc + tl.dot(w, x, input_precision=PRECISION) * scale[:, None]


@triton.jit
def gemm_kernel(
    x_ptr, w_ptr, scale_ptr, out_ptr,
    sorted_ids_ptr, block_experts_ptr, num_sorted_ptr, topk_weights_ptr,
    M, N, K, num_pairs, k_per_split,
    stride_xm, stride_xk,
    stride_we, stride_wk, stride_wn,
    stride_se, stride_sg, stride_sn,
    stride_os, stride_om, stride_on,
    gate_offset,
    MOE: tl.constexpr, X_ROW_DIV: tl.constexpr, WEIGHTED: tl.constexpr, GATED: tl.constexpr, PARTIAL: tl.constexpr,
    FMT: tl.constexpr, DEQ: tl.constexpr, PRECISION: tl.constexpr, GROUP: tl.constexpr, PTX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):
    """DEQ: how int weights become floats: 0 casts, 1 places bits in a float's mantissa, 3 (bfloat16,
    NVIDIA) by inline PTX, a word at a time (NIBBLES_TO_BF16, BYTES_TO_BF16). PARTIAL: an expert GEMM's K
    split: bare partial sums (no per-channel scale, no router weight: their sum applies them). GROUP: the K
    rows of a group-wise scale (0: per channel). int strides: stride_wn from one tile of 64 rows to the next,
    stride_wk from one tile of 64 K rows to the next (BLOCK_K 64). PTX: on an NVIDIA GPU (inline PTX)."""
    tl.static_assert(DEQ != 3 or (FMT != 0 and x_ptr.dtype.element_ty == tl.bfloat16),
                     "DEQ 3 converts int weights to bfloat16 only")
    tl.static_assert(FMT == 0 or (BLOCK_K == 64 and BLOCK_N % 64 == 0), "int tiles are 64 x 64")
    pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)  # gemm()'s grid
    wait_for_inputs(PDL)
    rows, row_ok, expert, k_start, k_end = _block(pid_m, pid_k, sorted_ids_ptr, block_experts_ptr, num_sorted_ptr,
                                                  M, K, num_pairs, k_per_split, MOE, BLOCK_M)
    x_rows = rows // X_ROW_DIV
    DTYPE = x_ptr.dtype.element_ty
    offs_k = k_start + tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + x_rows[None, :] * stride_xm + offs_k[:, None] * stride_xk  # [BLOCK_K, BLOCK_M]: x transposed
    if FMT != 0:  # rows of 512 bytes, ROWS a tile, of BLOCK_N / 64 tiles (_tile); the gate starts on a tile
        ROWS: tl.constexpr = 4 if FMT == 2 else 8
        r = tl.arange(0, BLOCK_N // 64 * ROWS)
        tile_rows = pid_n * (BLOCK_N // 64) + r // ROWS
        w_ptrs = (w_ptr + expert * stride_we + tile_rows[:, None] * stride_wn + (k_start // 64) * stride_wk
                  + (r % ROWS)[:, None] * 512 + tl.arange(0, 512)[None, :])
        w_ok = (tile_rows < tl.cdiv(N, 64))[:, None]
        g_ptrs = w_ptrs + tl.cdiv(gate_offset, 64) * stride_wn
        w_step = stride_wk
    else:
        w_cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        w_ptrs = w_ptr + expert * stride_we + w_cols[:, None] * stride_wn + offs_k[None, :] * stride_wk
        w_ok = (w_cols < N)[:, None]
        g_ptrs = w_ptrs + gate_offset * stride_wn
        w_step = BLOCK_K * stride_wk
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    gate = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    s_ptrs = scale_ptr + expert * stride_se + cols * stride_sn  # GROUP: their scales, each chunk
    s_ok = cols < N
    sg_ptrs = s_ptrs + gate_offset * stride_sn
    for k in range(k_start, k_end, BLOCK_K):
        k_ok = offs_k < K - (k - k_start)
        x = tl.load(x_ptrs, mask=k_ok[:, None] & row_ok[None, :], other=0.0)
        if FMT != 0:
            acc = _dot(_tile(w_ptrs, w_ok, FMT, DEQ, DTYPE, BLOCK_N), x, acc, k, s_ptrs, s_ok, stride_sg, GROUP,
                       PRECISION)
            if GATED:
                gate = _dot(_tile(g_ptrs, w_ok, FMT, DEQ, DTYPE, BLOCK_N), x, gate, k, sg_ptrs, s_ok, stride_sg,
                            GROUP, PRECISION)
        else:
            w_mask = w_ok & k_ok[None, :]
            acc = _dot(tl.load(w_ptrs, mask=w_mask, other=0.0).to(DTYPE), x, acc, k, s_ptrs, s_ok, stride_sg, GROUP,
                       PRECISION)
            if GATED:
                gate = _dot(tl.load(g_ptrs, mask=w_mask, other=0.0).to(DTYPE), x, gate, k, sg_ptrs, s_ok,
                            stride_sg, GROUP, PRECISION)
        if FMT != 0:  # weights from registers
            acc = _waited(acc, PTX)
            gate = _waited(gate, PTX and GATED)
        g_ptrs += w_step
        w_ptrs += w_step
        x_ptrs += BLOCK_K * stride_xk

    out_ptrs = out_ptr + pid_k * stride_os + rows[None, :] * stride_om
    # per-channel scales, applied once, and router weights; none on an expert GEMM's bare partial sums (PARTIAL,
    # 40 layers at batch 1: int8 94.2 -> 95.2 tokens/s, int4 145.7 -> 146.6; bench/results/decode_split_scales_ab.json)
    SCALED: tl.constexpr = FMT != 0 and GROUP == 0 and not PARTIAL
    WEIGH: tl.constexpr = WEIGHTED and not PARTIAL
    if GATED and tl.num_programs(2) > 1:  # partial sums of up [.., :N] and gate [.., N:]
        _finish(acc, acc, cols, rows, row_ok, expert, scale_ptr, stride_se, stride_sn, 0, topk_weights_ptr,
                out_ptrs, stride_on, N, SCALED, False, WEIGH)
        _finish(gate, gate, cols + N, rows, row_ok, expert, scale_ptr, stride_se, stride_sn, 0, topk_weights_ptr,
                out_ptrs, stride_on, 2 * N, SCALED, False, WEIGH)
    else:
        _finish(acc, gate, cols, rows, row_ok, expert, scale_ptr, stride_se, stride_sn, gate_offset,
                topk_weights_ptr, out_ptrs, stride_on, N, SCALED, GATED, WEIGH)


@dataclass(frozen=True)
class Weights:
    """A layer's weight as the kernel reads it: the tensor, its format and, when quantized, its scales.
    Strides are given as (expert, k, n) for the element at W[e, k, n] (int tiles: for its tile)."""

    tensor: torch.Tensor
    fmt: int
    n: int  # output columns
    k: int  # input columns
    scale: torch.Tensor | None = None
    group_size: int = 0  # K rows per group-wise scale; 0: per channel

    @classmethod
    def of(cls, weight: torch.Tensor, scale: torch.Tensor | None = None, precision: str | None = None,
           in_features: int | None = None) -> "Weights":
        """float [E?, N, K] (nn.Linear); int8 or int4 tiles [E?, N'/64, K'/64, 4096 or 2048] (in_features
        K given) with scale [E?, N], or group-wise int4 [E?, K/group_size, N]."""
        if precision is None:
            w = weight if weight.dim() == 3 else weight[None]
            return cls(w, FLOAT, w.shape[1], w.shape[2])
        fmt = FORMATS[precision]
        w, s = (weight, scale) if weight.dim() == 4 else (weight[None], scale[None])
        grouped = s.dim() == 3
        if in_features is None or -(-in_features // 64) != w.shape[-2]:
            raise ValueError(f"{precision} tiles {tuple(w.shape)} hold K rounded up to 64: give in_features "
                             f"(got {in_features})")
        return cls(w, fmt, s.shape[-1], in_features, s, in_features // s.shape[1] if grouped else 0)

    def key(self, op: str) -> str:
        """The shape key of this weight's GEMM in a tuning table (tuning.py)."""
        fmt = (str(self.tensor.dtype).removeprefix("torch.") if self.fmt == FLOAT
               else f"int{BITS[self.fmt]}" + (f"g{self.group_size}" if self.group_size else ""))
        return shape_key(op, fmt, self.n, self.k, self.tensor.shape[0])

    def strides(self) -> tuple[int, int, int]:
        if self.fmt == FLOAT:  # [E, N, K]: k is the last dim
            e, n, k = self.tensor.stride()
            return e, k, n
        e, n_tile, k_tile, _ = self.tensor.stride()  # [E, N tiles, K tiles, tile bytes]
        return e, k_tile, n_tile


def precision_of(dtype: torch.dtype) -> str | None:
    """float32 activations multiply in true float32 (the plain path's numbers), not tf32."""
    return "ieee" if dtype == torch.float32 else None


def gemm(x: torch.Tensor, w: Weights, out: torch.Tensor, config: GemmConfig, *, moe=None,
         x_row_div: int = 1, topk_weights: torch.Tensor | None = None, gated: bool = False) -> torch.Tensor:
    """Launch the kernel: x [rows, K] -> out [M, N] (or [split_k, M, N] float32 partial sums; the experts'
    before the scale and the router weight: `split_scale` says which scale their sum applies).
    `moe` = (sorted_ids, block_experts, num_sorted, num_pairs) for the experts."""
    n_out = w.n // 2 if gated else w.n
    columns = out_columns(w, config, gated)
    if out.shape[-1] != columns or (config.split_k > 1 and (out.dim() != 3 or out.shape[0] != config.split_k)):
        raise ValueError(f"out {tuple(out.shape)} for {config.split_k} split(s) of {columns} columns "
                         f"({'[split_k, M, N] float32 partial sums' if config.split_k > 1 else '[M, N]'})")
    if config.block_m < 16 or (w.fmt != FLOAT and not config.reads_tiles):
        raise ValueError(f"{TILES}, not {config}")
    if config.dequant == 3 and w.fmt != FLOAT and on_nvidia(x) and not packed_fits(w):
        raise ValueError("dequant 3 (int words to bfloat16 by inline PTX) takes bfloat16 scales, a Hopper GPU "
                         "or newer and tiles on 16 bytes: use dequant 1")
    if moe is None:
        m, sorted_ids, block_experts, num_sorted, num_pairs = x.shape[0], x, x, x, 0
        grid_m = triton.cdiv(m, config.block_m)
    else:
        sorted_ids, block_experts, num_sorted, num_pairs = moe
        m, grid_m = out.shape[-2], sorted_ids.shape[0] // config.block_m
    scale = w.scale if w.scale is not None else x
    out3 = out if out.dim() == 3 else out[None]
    gate_offset = n_out if gated else 0  # in columns (int tiles: the gate starts on the next tile)
    # Columns first: the GPU starts programs in grid order, so the experts' blocks past the routing (moe.py's
    # align: the most any routing can need; they exit at once) start after the routed ones, not among them.
    # int4, 40 layers at 64 tokens (a third of the blocks empty): GEMMs 20.9 ms a step against 21.3 rows first
    # (bench/results/decode_int4_40L_tiles_v2_columns_first.json, the profiles in decode_int4_40L_tiles_v2.json).
    grid = (triton.cdiv(n_out, config.block_n), grid_m, config.split_k)
    if grid_m > 65535:  # CUDA's limit on a grid's second dimension
        raise ValueError(f"{grid_m} blocks of {config.block_m} rows: at most 65,535 a launch (take fewer rows)")
    k_per_split = config.k_per_split(w.k)
    args = [x, w.tensor, scale, out3, sorted_ids, block_experts, num_sorted,
            topk_weights if topk_weights is not None else x, m, n_out, w.k, num_pairs, k_per_split,
            x.stride(0), x.stride(1), *w.strides(),
            scale.stride(0) if w.scale is not None else 0, scale.stride(1) if w.group_size else 0,
            scale.stride(-1) if w.scale is not None else 0, out3.stride(0), out3.stride(1), out3.stride(2), gate_offset]
    flags = dict(MOE=moe is not None, X_ROW_DIV=x_row_div, WEIGHTED=topk_weights is not None, GATED=gated,
                 PARTIAL=moe is not None and config.split_k > 1, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
                 num_warps=config.num_warps, **pdl(x))
    weight_bytes = BITS[w.fmt] / 8 if w.fmt != FLOAT else w.tensor.element_size()  # a value, as loaded
    stage = (config.block_m * x.element_size() + config.block_n * (2 if gated else 1) * weight_bytes) * config.block_k
    stages = max(1, min(config.num_stages, int(SHARED_MEMORY_BYTES // stage)))  # float32 tiles need fewer
    gemm_kernel[grid](*args, FMT=w.fmt, DEQ=config.dequant if w.fmt != FLOAT else 0,
                      PRECISION=precision_of(x.dtype), GROUP=w.group_size, PTX=on_nvidia(x), BLOCK_M=config.block_m,
                      **flags, num_stages=stages)
    return out


def split_scale(w: Weights, config: GemmConfig) -> torch.Tensor | None:
    """The per-channel scale [E, N] that the sum of an expert GEMM's K-split partial sums must apply (None:
    none left, the kernel applied it or the weights have none)."""
    return w.scale if config.split_k > 1 and w.fmt != FLOAT and not w.group_size else None


def out_columns(w: Weights, config: GemmConfig, gated: bool) -> int:
    """The columns gemm() writes: N (gated: a half of the weight's), twice that where a gated K split
    writes up's and gate's partial sums apart (SwiGLU comes after their sum)."""
    n_out = w.n // 2 if gated else w.n
    return 2 * n_out if gated and config.split_k > 1 else n_out


def packed_fits(w: "Weights") -> bool:
    """Whether gemm_kernel may convert these weights by inline PTX (DEQ 3): int8 or int4 to bfloat16, on
    a Hopper GPU or newer, tiles on 16 bytes. NIBBLES_TO_BF16 and BYTES_TO_BF16 take a whole 32-bit word of
    a tile; Triton hands an inline asm four bytes of one word where it loads 16 bytes a thread (seen on
    sm_90, and on sm_80 only with the pointer known 16-byte aligned), so elsewhere DEQ 1 converts."""
    return (on_nvidia(w.tensor) and w.fmt != FLOAT and w.scale.dtype == torch.bfloat16
            and capability(w.tensor)[0] >= 9 and w.tensor.data_ptr() % 16 == 0)


def warps_for(block_m: int, w: Weights) -> int:
    """A tile's warps: 8 at 128 rows (4 spill), and at 64 rows of group-wise int4 (its gate+up spills at 4:
    295 spill instructions, none at 8; bench/gemm_sass.py), else 4."""
    return 8 if block_m == 128 or (w.group_size and block_m == 64) else 4


def block_m_for(rows: int) -> int:
    return 16 if rows <= 16 else 32 if rows <= 32 else 64 if rows <= 128 else 128


def with_split_k(config: GemmConfig, tiles: int, k: int, sms: int, per_sm: int = 4) -> GemmConfig:
    """Split K, up to 8 ways, while the grid has fewer than ~per_sm programs per multiprocessor (small
    batches); the experts' int tiles at a pair an expert take ~32 (int4 at one token: gate+up 162 -> 110 us
    at split 4, down 124 -> 63 at 8, bench/results/gemm_int4_tiles_one_token.json; gate+up 86.7 -> 83.6 us
    at 8, bench/results/gemm_split_pdl_probe.json)."""
    split = 1
    while tiles * split * 2 <= per_sm * sms and k // (split * 2) >= 2 * config.block_k and split < 8:
        split *= 2
    return replace(config, split_k=split)


# Tensor-core tiles (block_m 16 and up) per weight format, from bench/gemm_tune.py on an H200 (DBRX's
# shapes). gemm_kernel multiplies the weights as the MMA's first operand, so Hopper's wgmma takes 64 of
# their columns at a time from the registers where they were dequantized, and the tokens (16 and up) as
# its second: int4 gate+up at 64 tokens 792 -> 505 us, at 128 tokens 2,393 -> 658 us, against x as the
# first operand (bench/results/gemm_swap_ab_probe.json). int8 and int4 read their tiles of 64 x 64
# (shared/tiles.py) 128 columns and 4 stages a program, converted by inline PTX where they can (DEQ 3:
# bfloat16 on NVIDIA GPUs): int4 gate+up 438 -> 302 us at 8 tokens, 634 -> 381 at 64, down 269 -> 185 and
# 300 -> 203, against the layout before (bench/results/gemm_int4_tiles_probe.json); block_m 128 takes 8
# warps (at 4 it spills).
INT_TILE = dict(block_n=128, block_k=64, num_stages=4)
# ONE_TOKEN_EXPERTS: at one token (a pair an expert) down runs in few, long programs (256 columns, K in 4: 384
# programs, ~3 a multiprocessor; 3 stages for int8, 4 for int4), and int8's gate+up splits K in 8 (with_split_k's
# rule at 64 a multiprocessor), as `--tune full` picked them. In the step, whole model, batch 1, int8: 96.5 ->
# 97.0 tokens/s with gate+up's, 98.2 with down's (99.0 with qkv's and dense's picks too; those alone 96.9;
# bench/results/decode_int8_40L_one_token_ab.json); gate+up's and down's as the defaults, 95.1 -> 97.1 in another
# call. int4's down: 147.0 -> 150.5-151.6 (decode_int4_40L_one_token_default_ab.json). Not past one token: at 4
# tokens int8's down split came to 1 (programs of 2.75 MB), 165.6 -> 159.7, and 2 tokens gained 0.6%
# (decode_int8_40L_few_pairs_ab.json), int4's nothing. Longer or shorter gate+up programs, and other qkv/dense
# tiles, were slower or the same (decode_40L_one_token_tiles_ab.json). Group-wise int4 keeps the default tiles.


def tile_config(rows: int, w: Weights) -> GemmConfig:
    """The tensor-core tile of block_m_for(rows); int weights take their tiles at one row too (split K:
    with_split_k)."""
    bm = block_m_for(rows)
    warps = warps_for(bm, w)
    if w.fmt != FLOAT:
        return GemmConfig(block_m=bm, num_warps=warps, dequant=3 if packed_fits(w) else 1, **INT_TILE)
    if bm == 16:
        return GemmConfig(block_m=bm, block_n=64, block_k=256, num_stages=3, dequant=0)
    if bm <= 64:  # a taller x tile: BLOCK_K 256 spilled registers (measured with x as the first operand)
        return GemmConfig(block_m=bm, block_n=64, block_k=128, num_stages=4, dequant=0)
    return GemmConfig(block_m=bm, block_n=128, block_k=64, num_warps=warps, num_stages=3, dequant=0)


def linear_config(m: int, w: Weights) -> GemmConfig:
    """The tuned configuration of this shape at m tokens (tuning.py), else the default tiles."""
    tuned = ACTIVE.config(w.key(LINEAR), m)
    if tuned is not None:
        return tuned
    config = tile_config(m, w)
    tiles = triton.cdiv(m, config.block_m) * triton.cdiv(w.n, config.block_n)
    return with_split_k(config, tiles, w.k, num_sms(w.tensor.device))


def moe_config(num_tokens: int, top_k: int, w: Weights, gated: bool = False) -> GemmConfig:
    """The tuned configuration of this expert GEMM at num_tokens (tuning.py), else tiles by twice the
    pairs an expert gets on average (the two expert GEMMs share the sorted pairs, so they agree on
    block_m: tuning.py checks a stored table's). K is split where an expert gets a pair or so (a program
    a pair and tile of columns: few programs); else all active experts fill the grid."""
    tuned = ACTIVE.config(w.key(MOE_UP if gated else MOE_DOWN), num_tokens)
    if tuned is not None:
        return tuned
    num_pairs = num_tokens * top_k
    mean = max(1, num_pairs // w.tensor.shape[0])  # pairs an expert gets on average
    # an expert's pairs spread around the mean: blocks of twice it hold most experts' pairs in one (a
    # block reads its expert's weights; bench/results/gemm_swap_ab_probe.json: 64 tokens, block_m 32)
    config = tile_config(1 if mean == 1 else 2 * mean, w)
    # int8 gate+up: 64 columns of up and 64 of gate, a K step's 8 KB as int4's 128 of each (462 -> 436 us
    # at 8 tokens, 568 -> 527 at 64, 141 -> 140 at one; bench/results/gemm_tune_int8_tiles.json)
    if gated and w.fmt == INT8:
        config = replace(config, block_n=64)
    if mean > 1 or w.fmt == FLOAT:  # float tiles: no split
        return config
    columns = w.n // 2 if gated else w.n  # gate+up: a program computes a column of both halves
    per_sm = 32
    if num_tokens == 1 and gated and w.fmt == INT8:  # ONE_TOKEN_EXPERTS: int8's gate+up K in 8
        per_sm = 64
    if num_tokens == 1 and not gated and not w.group_size:  # ONE_TOKEN_EXPERTS: down in few long programs
        per_sm = 4
        config = replace(config, block_n=256, num_stages=3 if w.fmt == INT8 else 4)
    return with_split_k(config, num_pairs * triton.cdiv(columns, config.block_n), w.k, num_sms(w.tensor.device),
                        per_sm)


class TritonWeightOnlyLinear(WeightOnlyLinear):
    """WeightOnlyLinear, same buffers; `forward` runs the kernel on the int8/int4 weight as stored.
    `partial_sums` leaves a K split's sums to be added by the layer that reads them (attention.py's
    qkv_rope_kernel: a launch fewer a layer at small batches)."""

    def partial_sums(self, rows: torch.Tensor) -> torch.Tensor:
        """rows [M, K] -> [S, M, N]: the K splits' float32 partial sums, or [1, M, N] in rows' dtype."""
        w = Weights.of(self.weight, self.scale, self.precision, self.in_features)
        config = linear_config(rows.shape[0], w)
        out = torch.empty(config.split_k, rows.shape[0], w.n,
                          dtype=torch.float32 if config.split_k > 1 else rows.dtype, device=rows.device)
        gemm(rows, w, out, config)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = self.partial_sums(x.reshape(-1, x.shape[-1]))
        y = sum_splits(parts, x.dtype) if parts.shape[0] > 1 else parts[0]
        return y.view(*x.shape[:-1], parts.shape[-1])


class CublasLinear(torch.nn.Linear):
    """A float projection, nn.Linear (torch's matmul: cuBLAS on CUDA), with TritonWeightOnlyLinear's
    `partial_sums`: its product as the one part."""

    def partial_sums(self, rows: torch.Tensor) -> torch.Tensor:
        return super().forward(rows)[None]
