"""Attention over the paged KV cache on CUDA, in two launches per layer.

    qkv_rope_kernel   one program per token and head (per group of heads at prefill
                      sizes): the qkv projection's K-split partial sums added, clip,
                      rotary embedding of q and k, k and v written to their cache
                      slots (int8 with a scale)
    attention_kernel  one program per (block of a sequence's new tokens, kv head):
                      the GROUP query heads that share a kv head read each key
                      and value once; causal within the step, online softmax.

One kernel serves decode (a block of one token) and prefill chunks (blocks of
BLOCK_Q tokens), so a mixed step is one launch and a decode step, whose grid is
fixed by the batch size, captures into a CUDA graph. What a step needs comes in
device tensors (plan.py's `StepTensors`): per program its sequence and first
token, per sequence where its new tokens start, its length after the step and
its block table.
"""

import math

import torch
import triton
import triton.language as tl

from dbrx_serve.shared.config import DbrxConfig
from dbrx_serve.shared.model import Attention, LocalShape

from dbrx_serve.shared.kv_scales import KVScales
from ..step_tensors import StepTensors
from .device import num_sms, pdl, wait_for_inputs

MAX_SPLITS = 32  # key runs of a decode step's attention (flash-decoding)
# qkv_rope_kernel's heads a program: one up to ONE_HEAD_TOKENS tokens (programs enough for a decode step),
# else up to PREFILL_HEADS (fewer, larger programs for a prompt's thousands of tokens)
ONE_HEAD_TOKENS, PREFILL_HEADS = 128, 8


@triton.jit
def qkv_rope_kernel(parts_ptr, q_ptr, k_cache_ptr, v_cache_ptr, positions_ptr, slots_ptr, inv_freq_ptr,
                    stride_split, stride_row, stride_q, stride_slot, clip, k_scale, v_scale, SPLITS: tl.constexpr,
                    NH: tl.constexpr, NKV: tl.constexpr, HEAD_DIM: tl.constexpr, HEADS: tl.constexpr,
                    CLIP: tl.constexpr, INT8_KV: tl.constexpr, PDL: tl.constexpr):
    """Program (token t, group of HEADS heads; HEADS divides NH): the heads' columns of t's qkv row
    (_load_heads: the projection's K-split parts summed); the NH / HEADS first groups rotate query heads
    into q, the others rotate kv heads' k and write it and their v to t's cache slot (none for a padded
    row of a CUDA-graph batch: no slot)."""
    wait_for_inputs(PDL)
    t, group = tl.program_id(0).to(tl.int64), tl.program_id(1)
    HALF: tl.constexpr = HEAD_DIM // 2
    d = tl.arange(0, HALF)[None, :]
    h = tl.arange(0, HEADS)[:, None]
    position = tl.load(positions_ptr + t).to(tl.float32)
    angle = position * tl.load(inv_freq_ptr + d)  # float32, as model.py's rotary()
    cos, sin = tl.cos(angle), tl.sin(angle)
    row = parts_ptr + t * stride_row
    DTYPE = q_ptr.dtype.element_ty
    if group < NH // HEADS:
        head = group * HEADS + h
        q1, q2 = _load_heads(row + head * HEAD_DIM, d, head < NH, SPLITS, stride_split, DTYPE, CLIP, clip)
        q_out = q_ptr + t * stride_q + head * HEAD_DIM + d
        tl.store(q_out, (q1 * cos - q2 * sin).to(DTYPE))
        tl.store(q_out + HALF, (q2 * cos + q1 * sin).to(DTYPE))
    else:
        slot = tl.load(slots_ptr + t).to(tl.int64)
        if slot >= 0:
            g = (group - NH // HEADS) * HEADS + h
            ok = g < NKV
            k1, k2 = _load_heads(row + (NH + g) * HEAD_DIM, d, ok, SPLITS, stride_split, DTYPE, CLIP, clip)
            v1, v2 = _load_heads(row + (NH + NKV + g) * HEAD_DIM, d, ok, SPLITS, stride_split, DTYPE, CLIP, clip)
            dest = slot * stride_slot + g * HEAD_DIM + d
            _store_kv(k_cache_ptr + dest, k1 * cos - k2 * sin, k2 * cos + k1 * sin, ok, HALF, k_scale, INT8_KV)
            _store_kv(v_cache_ptr + dest, v1, v2, ok, HALF, v_scale, INT8_KV)


@triton.jit
def _load_heads(ptrs, d, mask, SPLITS: tl.constexpr, stride_split, DTYPE: tl.constexpr, CLIP: tl.constexpr,
                clip):
    """Heads' two halves [HEADS, HEAD_DIM / 2] as float32 (ptrs: each head's first column): the sum of
    their SPLITS parts in order (unrolled: every load asked for first), rounded to DTYPE (what splits.py's
    sum_splits would have written: the same bits), clipped to [-clip, clip] if CLIP."""
    HALF: tl.constexpr = d.shape[1]
    x1 = tl.zeros((ptrs.shape[0], HALF), dtype=tl.float32)
    x2 = tl.zeros((ptrs.shape[0], HALF), dtype=tl.float32)
    for s in tl.static_range(SPLITS):
        x1 += tl.load(ptrs + s * stride_split + d, mask=mask, other=0.0).to(tl.float32)
        x2 += tl.load(ptrs + s * stride_split + HALF + d, mask=mask, other=0.0).to(tl.float32)
    x1, x2 = x1.to(DTYPE).to(tl.float32), x2.to(DTYPE).to(tl.float32)
    if CLIP:
        x1, x2 = tl.clamp(x1, -clip, clip), tl.clamp(x2, -clip, clip)
    return x1, x2


@triton.jit
def _store_kv(ptr, x1, x2, mask, HALF: tl.constexpr, scale, INT8_KV: tl.constexpr):
    if INT8_KV:  # round(x / scale) clamped to [-127, 127], as kv_cache.py's plain path
        x1 = tl.clamp(_round(x1 / scale), -127.0, 127.0)
        x2 = tl.clamp(_round(x2 / scale), -127.0, 127.0)
    tl.store(ptr, x1.to(ptr.dtype.element_ty), mask=mask)
    tl.store(ptr + HALF, x2.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _round(x):
    """Round half to even, as torch.round."""
    r = tl.floor(x + 0.5)
    tie = (r - x) == 0.5
    return tl.where(tie & ((r % 2) != 0), r - 1.0, r)


@triton.jit
def attention_kernel(q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, partial_ptr, stats_ptr,
                     program_seq_ptr, program_start_ptr, query_start_ptr, seq_lens_ptr, block_tables_ptr,
                     stride_q, stride_out, stride_slot, stride_table, num_tokens, sm_scale, k_scale, v_scale,
                     NH: tl.constexpr, GROUP: tl.constexpr, GROUP_P2: tl.constexpr, HEAD_DIM: tl.constexpr,
                     BLOCK_Q: tl.constexpr, TILE: tl.constexpr, PAGE: tl.constexpr, SPLITS: tl.constexpr,
                     PRECISION: tl.constexpr, PDL: tl.constexpr):
    """With SPLITS > 1 each program takes one of SPLITS runs of the keys and leaves its unnormalized
    output and softmax statistics for combine_kernel (flash-decoding: enough programs at small batch)."""
    wait_for_inputs(PDL)
    pid, kv_head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    seq = tl.load(program_seq_ptr + pid).to(tl.int64)
    first = tl.load(program_start_ptr + pid)  # this program's first token (row of the step)
    end = tl.load(query_start_ptr + seq + 1)  # one past the sequence's last new token
    seq_len = tl.load(seq_lens_ptr + seq)  # tokens in the cache once this step's are written

    ROWS: tl.constexpr = BLOCK_Q * GROUP_P2
    r = tl.arange(0, ROWS)
    token = first + r // GROUP_P2  # [ROWS] step row of each query row
    head = kv_head * GROUP + r % GROUP_P2
    row_ok = (token < end) & (r % GROUP_P2 < GROUP)
    position = seq_len - (end - token)  # [ROWS]: keys j <= position are visible
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + token[:, None].to(tl.int64) * stride_q + head[:, None] * HEAD_DIM + d[None, :],
                mask=row_ok[:, None], other=0.0)

    m_i = tl.full((ROWS,), float("-inf"), tl.float32)
    l_i = tl.zeros((ROWS,), tl.float32)
    acc = tl.zeros((ROWS, HEAD_DIM), tl.float32)
    qk_scale = sm_scale * k_scale * 1.4426950408889634  # log2(e): softmax with exp2
    last_visible = seq_len - (end - tl.minimum(first + BLOCK_Q, end))  # keys the block's last token sees
    per_split = tl.cdiv(tl.cdiv(last_visible, TILE), SPLITS) * TILE
    lo = split * per_split
    hi = tl.minimum(last_visible, lo + per_split)
    j = tl.arange(0, TILE)
    for j0 in range(lo, hi, TILE):
        key = j0 + j
        key_ok = key < hi
        block = tl.load(block_tables_ptr + seq * stride_table + key // PAGE, mask=key_ok, other=0).to(tl.int64)
        kv_off = (block * PAGE + key % PAGE)[:, None] * stride_slot + kv_head * HEAD_DIM + d[None, :]
        k = tl.load(k_cache_ptr + kv_off, mask=key_ok[:, None], other=0.0).to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        s = tl.where((key[None, :] <= position[:, None]) & key_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        v = tl.load(v_cache_ptr + kv_off, mask=key_ok[:, None], other=0.0).to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v, input_precision=PRECISION)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    if SPLITS == 1:
        out = acc * (v_scale / tl.where(l_i == 0.0, 1.0, l_i))[:, None]
        tl.store(out_ptr + token[:, None].to(tl.int64) * stride_out + head[:, None] * HEAD_DIM + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
    else:  # [SPLITS, N, NH, HEAD_DIM] and [SPLITS, N, NH, 2] (max, sum)
        at = (split * num_tokens + token.to(tl.int64)) * NH + head
        tl.store(partial_ptr + at[:, None] * HEAD_DIM + d[None, :], acc, mask=row_ok[:, None])
        tl.store(stats_ptr + at * 2, m_i, mask=row_ok)
        tl.store(stats_ptr + at * 2 + 1, l_i, mask=row_ok)


@triton.jit
def combine_kernel(partial_ptr, stats_ptr, out_ptr, num_tokens, stride_out, v_scale,
                   NH: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr, PDL: tl.constexpr):
    """One program per (token, head): the splits' outputs weighted by their share of the softmax."""
    wait_for_inputs(PDL)
    t, h = tl.program_id(0).to(tl.int64), tl.program_id(1)
    s = tl.arange(0, SPLITS)
    at = (s * num_tokens + t) * NH + h
    m = tl.load(stats_ptr + at * 2)
    l = tl.load(stats_ptr + at * 2 + 1)
    top = tl.max(m, axis=0)
    w = tl.where(m == float("-inf"), 0.0, tl.exp2(m - tl.where(top == float("-inf"), 0.0, top)))
    acc = tl.sum(tl.load(partial_ptr + at[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]) * w[:, None], 0)
    total = tl.sum(l * w, axis=0)
    out = acc * (v_scale / tl.where(total == 0.0, 1.0, total))
    tl.store(out_ptr + t * stride_out + h * HEAD_DIM + tl.arange(0, HEAD_DIM), out.to(out_ptr.dtype.element_ty))


class TritonAttention(Attention):
    """The model's Attention, same parameters and names; `attend` is TritonPagedCache.attend, which takes
    the qkv projection's partial sums (gemm.py's `partial_sums`: its K splits, not yet added): the sum,
    clip, rotary, cache write and attention happen in its kernels."""

    def forward(self, x, cos, sin, positions, attend) -> torch.Tensor:
        B, T, _ = x.shape
        y = attend(self.layer, self.qkv.partial_sums(x.reshape(B * T, -1)))  # [N, nh*hd]
        return self.dense(y.view(B, T, -1))


class TritonPagedCache:
    """The paged KV cache on CUDA: per layer K and V [slots, nkv, hd] (int8 with per-layer scales),
    attended through the two kernels above over a step's StepTensors."""

    def __init__(self, cfg: DbrxConfig, shape: LocalShape, num_blocks: int, tokens_per_block: int,
                 dtype: torch.dtype, device, scales: KVScales | None, tensors: StepTensors):
        layout = (len(shape.layers), num_blocks * tokens_per_block, shape.n_kv_heads, cfg.head_dim)
        self.k = torch.zeros(layout, dtype=torch.int8 if scales else dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.cfg, self.shape, self.scales, self.tensors, self.dtype = cfg, shape, scales, tensors, dtype
        self.tokens_per_block = tokens_per_block
        self.inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, device=device,
                                                               dtype=torch.float32) / cfg.head_dim))
        self.group = shape.n_heads // shape.n_kv_heads
        self.num_tokens = self.num_programs = 0
        self.block_q, self.splits = 1, 1

    @property
    def decode_block_q(self) -> int:
        """Query tokens per program in decode steps: one token, rows padded to the 16 a dot needs."""
        return max(1, 16 // triton.next_power_of_2(self.group))

    def prepare(self, plan, num_programs: int, block_q: int, splits: int | None = None) -> None:
        """The step's sizes (its tensors are already in `self.tensors`); decode steps split the keys
        until there are about two programs per multiprocessor."""
        self.num_tokens, self.num_programs, self.block_q = plan.num_tokens, num_programs, block_q
        if splits is None:
            wanted = 2 * num_sms(self.k.device) // max(1, num_programs * self.shape.n_kv_heads)
            splits = min(MAX_SPLITS, triton.next_power_of_2(max(1, wanted))) if plan.is_decode else 1
        self.splits = splits

    def layer_scales(self, layer: int) -> tuple[float, float]:
        return (self.scales.k[layer], self.scales.v[layer]) if self.scales else (1.0, 1.0)

    def attend(self, layer: int, parts: torch.Tensor) -> torch.Tensor:
        """parts [S, N, (nh+2nkv)*hd]: the qkv rows, or S partial sums of them (float32) -> [N, nh*hd]."""
        n, nh, nkv, hd = self.num_tokens, self.shape.n_heads, self.shape.n_kv_heads, self.cfg.head_dim
        if parts.dim() != 3 or parts.shape[1:] != (n, (nh + 2 * nkv) * hd) or parts.stride(2) != 1:
            raise ValueError(f"attend takes qkv's partial sums [S, {n}, {(nh + 2 * nkv) * hd}] with a contiguous "
                             f"last dimension: got {tuple(parts.shape)}")
        t, (k_scale, v_scale) = self.tensors, self.layer_scales(layer)
        k, v = self.k[layer], self.v[layer]
        q = torch.empty(n, nh, hd, dtype=self.dtype, device=parts.device)
        heads = 1 if n <= ONE_HEAD_TOKENS else math.gcd(nh, PREFILL_HEADS)
        qkv_rope_kernel[(n, nh // heads + triton.cdiv(nkv, heads))](
            parts, q, k, v, t.positions, t.slots, self.inv_freq, parts.stride(0), parts.stride(1),
            q.stride(0), k.stride(0), self.cfg.clip_qkv or 0.0, k_scale, v_scale, SPLITS=parts.shape[0], NH=nh,
            NKV=nkv, HEAD_DIM=hd, HEADS=heads, CLIP=self.cfg.clip_qkv is not None, INT8_KV=self.scales is not None,
            num_warps=1 if heads == 1 else 4, **pdl(parts))
        out = torch.empty(n, nh * hd, dtype=self.dtype, device=parts.device)
        partial = torch.empty(self.splits, n, nh, hd, dtype=torch.float32, device=parts.device) if self.splits > 1 else out
        stats = torch.empty(self.splits, n, nh, 2, dtype=torch.float32, device=parts.device) if self.splits > 1 else out
        attention_kernel[(self.num_programs, nkv, self.splits)](
            q, k, v, out, partial, stats, t.program_seq, t.program_start, t.query_start, t.seq_lens, t.block_tables,
            q.stride(0), out.stride(0), k.stride(0), t.block_tables.stride(0), n, hd ** -0.5, k_scale, v_scale,
            NH=nh, GROUP=self.group, GROUP_P2=triton.next_power_of_2(self.group), HEAD_DIM=hd, BLOCK_Q=self.block_q,
            TILE=64, PAGE=self.tokens_per_block, SPLITS=self.splits,
            PRECISION="ieee" if self.dtype == torch.float32 else None, num_warps=4, **pdl(parts))
        if self.splits > 1:
            combine_kernel[(n, nh)](partial, stats, out, n, out.stride(0), v_scale, NH=nh, HEAD_DIM=hd,
                                    SPLITS=self.splits, num_warps=1, **pdl(parts))
        return out
