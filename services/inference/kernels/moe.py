"""DBRX's mixture of experts on CUDA: the whole layer without a host sync.

    route   router logits in float32 (up to 128 tokens router_parts_kernel's sums of 512 features,
            past that cuBLAS's); softmax, top-k, p-norm, 16 tokens a program
    align   one program: (token, slot) pairs sorted by expert, each expert's run
            padded to a multiple of BLOCK_M, the expert of every block (up to 16 tokens
            route and align are one program: route_align_kernel)
    gemm    gate+up for all active experts in one launch, SwiGLU fused (gemm.py)
    gemm    down for all active experts in one launch, times the router weight
    sum     the K splits and top-k outputs of each token, with the scales and router weights a K
            split's partial sums still lack (splits.py; deterministic: no atomics)

Every launch has a size fixed by the number of tokens alone, so decode steps
capture into CUDA graphs. `FusedMoE` takes the model's `MoE` parameters as they
are (float or weight-only experts) and computes the same function.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from dbrx_serve.shared.model import MoE

from .device import pdl, wait_for_inputs
from .gemm import GemmConfig, Weights, gemm, moe_config, split_scale
from .splits import sum_splits

# Decode sizes take the router's logits from our two kernels (in a CUDA graph, under PDL): int4, 40 layers,
# batch 1 135.2 -> 138.2 tok/s against a float32 copy of x and cuBLAS (three launches); more tokens take
# cuBLAS (bench/results/decode_int4_40L_router_parts_ab.json).
ROUTER_PARTS_TOKENS = 128
# Up to 16 tokens (one pass of _route_rows) routing and align are one program: batch 1 138.4 -> 140.5 tok/s;
# at 64 tokens the program's four passes took 2,403 -> 2,388 (bench/results/decode_int4_40L_route_align_ab.json).
ROUTE_ALIGN_TOKENS = 16
ROUTER_BLOCK_H = 512  # features a router_parts_kernel program: 32 KB of a float32 router of 16 experts


@triton.jit
def router_parts_kernel(x_ptr, router_ptr, parts_ptr, H, stride_x, E: tl.constexpr, E_P2: tl.constexpr,
                        BLOCK_H: tl.constexpr, PDL: tl.constexpr):
    """Program (token t, chunk c of BLOCK_H features): each expert's float32 sum over the chunk of x[t] times
    its router row, into parts [N, chunks, E]."""
    wait_for_inputs(PDL)
    t, c = tl.program_id(0).to(tl.int64), tl.program_id(1)
    h, e = c * BLOCK_H + tl.arange(0, BLOCK_H), tl.arange(0, E_P2)
    x = tl.load(x_ptr + t * stride_x + h, mask=h < H, other=0.0).to(tl.float32)
    r = tl.load(router_ptr + e[:, None] * H + h[None, :], mask=(e < E)[:, None] & (h < H)[None, :], other=0.0)
    tl.store(parts_ptr + (t * tl.num_programs(1) + c) * E + e, tl.sum(r.to(tl.float32) * x[None, :], axis=1),
             mask=e < E)


@triton.jit
def _route_rows(logits_ptr, weights_ptr, ids_ptr, t0, N, E: tl.constexpr, E_P2: tl.constexpr,
                TOP_K: tl.constexpr, TOP_K_P2: tl.constexpr, NORM_P: tl.constexpr, CHUNKS: tl.constexpr,
                CHUNKS_P2: tl.constexpr, ROWS: tl.constexpr):
    """Tokens t0 to t0 + ROWS (below N): softmax of their router logits (CHUNKS > 0: the sums of their
    router_parts_kernel parts [N, CHUNKS, E] over the chunks), top-k (lowest index on ties), p-norm; the
    weights and expert ids to [N, TOP_K]."""
    t, e = t0 + tl.arange(0, ROWS), tl.arange(0, E_P2)
    ok = (t < N)[:, None] & (e < E)[None, :]  # [ROWS, E_P2]
    if CHUNKS > 0:
        c = tl.arange(0, CHUNKS_P2)
        parts = tl.load(logits_ptr + ((t[:, None] * CHUNKS + c[None, :]) * E)[:, :, None] + e[None, None, :],
                        mask=ok[:, None, :] & (c < CHUNKS)[None, :, None], other=0.0)  # [ROWS, CHUNKS_P2, E_P2]
        logits = tl.sum(parts, axis=1)
    else:
        logits = tl.load(logits_ptr + t[:, None] * E + e[None, :], mask=ok, other=0.0)
    logits = tl.where((e < E)[None, :], logits, float("-inf"))  # rows past N: zeros, never stored
    p = tl.exp(logits - tl.max(logits, axis=1)[:, None])
    p = p / tl.sum(p, axis=1)[:, None]
    k = tl.arange(0, TOP_K_P2)[None, :]
    top_w = tl.zeros((ROWS, TOP_K_P2), dtype=tl.float32)
    top_i = tl.zeros((ROWS, TOP_K_P2), dtype=tl.int32)
    for i in tl.static_range(TOP_K):
        best = tl.max(p, axis=1)[:, None]
        idx = tl.min(tl.where(p == best, e[None, :], E_P2), axis=1)[:, None]
        top_w = tl.where(k == i, best, top_w)
        top_i = tl.where(k == i, idx, top_i)
        p = tl.where(e[None, :] == idx, -1.0, p)
    if NORM_P == 1.0:
        top_w = top_w / tl.sum(top_w, axis=1)[:, None]
    elif NORM_P > 0:
        top_w = top_w / (tl.exp(tl.log(tl.sum(tl.exp(NORM_P * tl.log(top_w)), axis=1)) / NORM_P))[:, None]
    out = t[:, None] * TOP_K + k
    keep = (t < N)[:, None] & (k < TOP_K)
    tl.store(weights_ptr + out, top_w, mask=keep)
    tl.store(ids_ptr + out, top_i, mask=keep)


@triton.jit
def route_kernel(logits_ptr, weights_ptr, ids_ptr, N, E: tl.constexpr, E_P2: tl.constexpr, TOP_K: tl.constexpr,
                 TOP_K_P2: tl.constexpr, NORM_P: tl.constexpr, CHUNKS: tl.constexpr, CHUNKS_P2: tl.constexpr,
                 ROWS: tl.constexpr, PDL: tl.constexpr):
    """ROWS tokens a program (_route_rows)."""
    wait_for_inputs(PDL)
    _route_rows(logits_ptr, weights_ptr, ids_ptr, tl.program_id(0) * ROWS, N, E, E_P2, TOP_K, TOP_K_P2, NORM_P,
                CHUNKS, CHUNKS_P2, ROWS)


@triton.jit
def _align(ids_ptr, num_pairs, sorted_ids_ptr, block_experts_ptr, num_sorted_ptr, num_slots, E: tl.constexpr,
           E_P2: tl.constexpr, EXPERT_OFFSET: tl.constexpr, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr):
    """Pairs routed to expert EXPERT_OFFSET + e go, in pair order, to a run that starts at a multiple of
    BLOCK_M; padding slots hold num_pairs; experts of other ranks are left out."""
    c, e = tl.arange(0, CHUNK), tl.arange(0, E_P2)
    counts = tl.zeros((E_P2,), tl.int32)
    for p0 in range(0, num_pairs, CHUNK):  # pairs per local expert
        ids = tl.load(ids_ptr + p0 + c, mask=p0 + c < num_pairs, other=-1) - EXPERT_OFFSET
        counts += tl.sum(((ids[None, :] == e[:, None]) & (e[:, None] < E)).to(tl.int32), axis=1)
    padded = tl.cdiv(counts, BLOCK_M) * BLOCK_M
    ends = tl.cumsum(padded, axis=0)  # [E_P2] where each expert's run ends
    for s in range(0, num_slots, CHUNK):
        tl.store(sorted_ids_ptr + s + c, num_pairs, mask=s + c < num_slots)
    tl.debug_barrier()  # the padding is written before the pairs
    seen = tl.zeros((E_P2,), tl.int32)
    for p0 in range(0, num_pairs, CHUNK):  # each pair to its place in its expert's run
        ids = tl.load(ids_ptr + p0 + c, mask=p0 + c < num_pairs, other=-1) - EXPERT_OFFSET
        hit = ((ids[None, :] == e[:, None]) & (e[:, None] < E)).to(tl.int32)  # [E_P2, CHUNK]
        place = (ends - padded + seen)[:, None] + tl.cumsum(hit, axis=1) - 1
        tl.store(sorted_ids_ptr + tl.sum(place * hit, axis=0), p0 + c, mask=tl.sum(hit, axis=0) > 0)
        seen += tl.sum(hit, axis=1)
    total = tl.sum(padded, axis=0)
    for b0 in range(0, total // BLOCK_M, CHUNK):  # the expert of each block: runs that end before it
        b = b0 + c
        expert = tl.sum((ends[None, :] <= (b * BLOCK_M)[:, None]).to(tl.int32), axis=1)
        tl.store(block_experts_ptr + b, expert, mask=b < total // BLOCK_M)
    tl.store(num_sorted_ptr, total)


@triton.jit
def align_kernel(ids_ptr, num_pairs, sorted_ids_ptr, block_experts_ptr, num_sorted_ptr, num_slots,
                 E: tl.constexpr, E_P2: tl.constexpr, EXPERT_OFFSET: tl.constexpr, BLOCK_M: tl.constexpr,
                 CHUNK: tl.constexpr, PDL: tl.constexpr):
    """One program: _align."""
    wait_for_inputs(PDL)
    _align(ids_ptr, num_pairs, sorted_ids_ptr, block_experts_ptr, num_sorted_ptr, num_slots, E, E_P2,
           EXPERT_OFFSET, BLOCK_M, CHUNK)


@triton.jit
def route_align_kernel(logits_ptr, weights_ptr, ids_ptr, N, sorted_ids_ptr, block_experts_ptr, num_sorted_ptr,
                       num_slots, E: tl.constexpr, E_P2: tl.constexpr, TOP_K: tl.constexpr,
                       TOP_K_P2: tl.constexpr, NORM_P: tl.constexpr, CHUNKS: tl.constexpr,
                       CHUNKS_P2: tl.constexpr, ROWS: tl.constexpr, NUM_EXPERTS: tl.constexpr,
                       NUM_EXPERTS_P2: tl.constexpr, EXPERT_OFFSET: tl.constexpr, BLOCK_M: tl.constexpr,
                       CHUNK: tl.constexpr, PDL: tl.constexpr):
    """One program: every token's routing (_route_rows), then its pairs aligned (_align): at decode sizes one
    launch where two took a launch and a wait more."""
    wait_for_inputs(PDL)
    for t0 in range(0, N, ROWS):
        _route_rows(logits_ptr, weights_ptr, ids_ptr, t0, N, E, E_P2, TOP_K, TOP_K_P2, NORM_P, CHUNKS, CHUNKS_P2,
                    ROWS)
    tl.debug_barrier()  # the ids are written before _align reads them (one program: a block's barrier)
    _align(ids_ptr, N * TOP_K, sorted_ids_ptr, block_experts_ptr, num_sorted_ptr, num_slots, NUM_EXPERTS,
           NUM_EXPERTS_P2, EXPERT_OFFSET, BLOCK_M, CHUNK)


def router_logits(x: torch.Tensor, router: torch.Tensor) -> tuple[torch.Tensor, int]:
    """x [N,H], router [E,H] float32 -> the float32 logits as the route kernels read them, and their chunks:
    up to ROUTER_PARTS_TOKENS tokens (decode) router_parts_kernel's parts [N, chunks, E] (chunks > 0: the
    route kernels add them up), more by cuBLAS [N, E] (chunks 0; a float32 copy of x first). The two sum in
    different orders (as cuBLAS does for different N, and the CPU's plain path again), so their logits may
    differ in the last bits: where a token's 4th and 5th experts are that close, the expert it takes can
    depend on the path (and so on the step's size), as it could with cuBLAS alone."""
    (n, h), e = x.shape, router.shape[0]
    if n > ROUTER_PARTS_TOKENS or x.stride(1) != 1 or not router.is_contiguous():
        return F.linear(x.float(), router), 0
    chunks = triton.cdiv(h, ROUTER_BLOCK_H)
    parts = torch.empty(n, chunks, e, dtype=torch.float32, device=x.device)
    router_parts_kernel[(n, chunks)](x, router, parts, h, x.stride(0), E=e, E_P2=triton.next_power_of_2(e),
                                     BLOCK_H=ROUTER_BLOCK_H, num_warps=4, **pdl(x))
    return parts, chunks


def routing_flags(n: int, e: int, top_k: int, norm_p: float | None, chunks: int) -> dict:
    """The route kernels' sizes: E experts, top-k, p-norm, parts, tokens a pass (up to 16)."""
    return dict(E=e, E_P2=triton.next_power_of_2(e), TOP_K=top_k, TOP_K_P2=triton.next_power_of_2(top_k),
                NORM_P=float(norm_p or 0.0), CHUNKS=chunks, CHUNKS_P2=triton.next_power_of_2(max(chunks, 1)),
                ROWS=min(16, triton.next_power_of_2(max(n, 1))))


def route(logits: torch.Tensor, chunks: int, top_k: int, norm_p: float | None):
    """router_logits' (logits, chunks) -> (weights [N,K] float32, expert ids [N,K] int32)."""
    n, e = logits.shape[0], logits.shape[-1]
    weights = torch.empty(n, top_k, dtype=torch.float32, device=logits.device)
    ids = torch.empty(n, top_k, dtype=torch.int32, device=logits.device)
    flags = routing_flags(n, e, top_k, norm_p, chunks)
    route_kernel[(triton.cdiv(n, flags["ROWS"]),)](logits, weights, ids, n, **flags, num_warps=4, **pdl(logits))
    return weights, ids


def align_buffers(num_pairs: int, num_experts: int, block_m: int, device) -> tuple[torch.Tensor, ...]:
    """align's outputs (sorted_ids [slots], block_experts [slots / block_m], num_sorted [1]); slots is the
    most any routing of num_pairs pairs over num_experts experts can need: each expert a pair or more takes
    up to block_m - 1 slots of padding, and no more experts than pairs take any (one token: 4 blocks
    where 16 experts would give 16, the GEMMs' programs of the other 12 exiting at once)."""
    slots = triton.cdiv(num_pairs + min(num_experts, num_pairs) * (block_m - 1), block_m) * block_m
    return (torch.empty(slots, dtype=torch.int32, device=device),
            torch.empty(slots // block_m, dtype=torch.int32, device=device),
            torch.empty(1, dtype=torch.int32, device=device))


def align_flags(slots: int, num_experts: int) -> dict:
    """_align's pass (one pass of each loop up to 512 slots: decode) and warps."""
    chunk = min(512, max(16, triton.next_power_of_2(slots)))
    e_p2 = triton.next_power_of_2(num_experts)
    return dict(CHUNK=chunk, num_warps=1 if chunk * e_p2 <= 1024 else 8)


def align(ids: torch.Tensor, num_experts: int, expert_offset: int, block_m: int):
    """ids [N,K] -> align_buffers, filled."""
    num_pairs = ids.numel()
    sorted_ids, block_experts, num_sorted = align_buffers(num_pairs, num_experts, block_m, ids.device)
    align_kernel[(1,)](ids, num_pairs, sorted_ids, block_experts, num_sorted, sorted_ids.numel(), E=num_experts,
                       E_P2=triton.next_power_of_2(num_experts), EXPERT_OFFSET=expert_offset, BLOCK_M=block_m,
                       **align_flags(sorted_ids.numel(), num_experts), **pdl(ids))
    return sorted_ids, block_experts, num_sorted


def route_and_align(x: torch.Tensor, router: torch.Tensor, top_k: int, norm_p: float | None, num_experts: int,
                    expert_offset: int, block_m: int):
    """x [N,H], router [E,H] float32 -> (weights [N,K] float32, expert ids [N,K] int32, and align's three for
    those ids); up to ROUTE_ALIGN_TOKENS tokens routing and align are one program (route_align_kernel), else
    route_kernel's programs and align_kernel's."""
    logits, chunks = router_logits(x, router)
    n, e = x.shape[0], router.shape[0]
    if chunks == 0 or n > ROUTE_ALIGN_TOKENS:
        weights, ids = route(logits, chunks, top_k, norm_p)
        return weights, ids, *align(ids, num_experts, expert_offset, block_m)
    weights = torch.empty(n, top_k, dtype=torch.float32, device=x.device)
    ids = torch.empty(n, top_k, dtype=torch.int32, device=x.device)
    sorted_ids, block_experts, num_sorted = align_buffers(n * top_k, num_experts, block_m, x.device)
    route_align_kernel[(1,)](logits, weights, ids, n, sorted_ids, block_experts, num_sorted, sorted_ids.numel(),
                             **routing_flags(n, e, top_k, norm_p, chunks), NUM_EXPERTS=num_experts,
                             NUM_EXPERTS_P2=triton.next_power_of_2(num_experts), EXPERT_OFFSET=expert_offset,
                             BLOCK_M=block_m, **align_flags(sorted_ids.numel(), num_experts), **pdl(x))
    return weights, ids, sorted_ids, block_experts, num_sorted


def expert_weights(module) -> Weights:
    """An ExpertLinear (float [El, out, in]) or WeightOnlyExpertLinear as the kernel reads it."""
    return Weights.of(module.weight, getattr(module, "scale", None), getattr(module, "precision", None),
                      getattr(module, "in_features", None))


class FusedMoE(MoE):
    """The model's MoE, same parameters and names; `forward` runs the launches above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N,H]
        n, k = x.shape[0], self.top_k
        fc, proj = expert_weights(self.fc), expert_weights(self.proj)
        num_experts = fc.tensor.shape[0]
        up_config, down_config = moe_config(n, k, fc, gated=True), moe_config(n, k, proj)
        weights, ids, sorted_ids, block_experts, num_sorted = route_and_align(
            x, self.router.weight, k, self.norm_p, num_experts, self.expert_offset, up_config.block_m)
        moe = (sorted_ids, block_experts, num_sorted, n * k)
        act = self.activation(x, fc, up_config, moe, ids)  # [N*K,Il]
        y = self.down_buffer(n * k, x, down_config)  # [S,N*K,H]
        gemm(act, proj, y, down_config, moe=moe, topk_weights=weights)
        split = down_config.split_k > 1  # the splits' sums are bare: their scales and router weights here
        return sum_splits(y, x.dtype, rows_per_out=k, **self.split_factors(proj, down_config, ids),
                          row_weights=weights.view(-1) if split else None).view(shape)

    def activation(self, x: torch.Tensor, fc: Weights, config: GemmConfig, moe: tuple, ids: torch.Tensor
                   ) -> torch.Tensor:
        """SwiGLU of gate+up for every pair: in the GEMM, or after the sum of its K-split partials."""
        num_pairs = moe[3]
        if config.split_k == 1:
            act = torch.empty(num_pairs, self.ffn_size, dtype=x.dtype, device=x.device)
            return gemm(x, fc, act, config, moe=moe, x_row_div=self.top_k, gated=True)
        parts = torch.empty(config.split_k, num_pairs, 2 * self.ffn_size, dtype=torch.float32, device=x.device)
        gemm(x, fc, parts, config, moe=moe, x_row_div=self.top_k, gated=True)
        return sum_splits(parts, x.dtype, gated=True, **self.split_factors(fc, config, ids))

    def split_factors(self, w: Weights, config: GemmConfig, ids: torch.Tensor) -> dict:
        """sum_splits' scale of each pair's expert, where the GEMM's K split left it (gemm.py's split_scale)."""
        scale = split_scale(w, config)
        return {} if scale is None else dict(scale=scale, experts=ids.view(-1), expert_offset=self.expert_offset)

    def down_buffer(self, num_pairs: int, x: torch.Tensor, config: GemmConfig) -> torch.Tensor:
        """Zeros where pairs may go to another rank's experts (never written here), else uninitialized."""
        dtype = torch.float32 if config.split_k > 1 else x.dtype
        all_local = self.fc.weight.shape[0] == self.router.weight.shape[0]
        make = torch.empty if all_local else torch.zeros
        return make(config.split_k, num_pairs, x.shape[-1], dtype=dtype, device=x.device)
