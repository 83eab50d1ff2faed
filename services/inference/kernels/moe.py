"""DBRX's mixture of experts on CUDA: the whole layer without a host sync.

    route   router logits (float32, cuBLAS); one program per token: softmax, top-k, p-norm
    align   one program: (token, slot) pairs sorted by expert, each expert's run
            padded to a multiple of BLOCK_M, the expert of every block
    gemm    gate+up for all active experts in one launch, SwiGLU fused (gemm.py)
    gemm    down for all active experts in one launch, times the router weight
    sum     the K splits and top-k outputs of each token (splits.py; deterministic: no atomics)

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
from .gemm import GemmConfig, Weights, gemm, moe_config
from .splits import sum_splits


@triton.jit
def route_kernel(logits_ptr, weights_ptr, ids_ptr, E: tl.constexpr, E_P2: tl.constexpr, TOP_K: tl.constexpr,
                 TOP_K_P2: tl.constexpr, NORM_P: tl.constexpr, PDL: tl.constexpr):
    """One program per token: softmax of its router logits, top-k (lowest index on ties), p-norm."""
    wait_for_inputs(PDL)
    t = tl.program_id(0).to(tl.int64)
    e = tl.arange(0, E_P2)
    logits = tl.load(logits_ptr + t * E + e, mask=e < E, other=float("-inf"))
    p = tl.exp(logits - tl.max(logits, axis=0))
    p = p / tl.sum(p, axis=0)
    k = tl.arange(0, TOP_K_P2)
    top_w = tl.zeros((TOP_K_P2,), dtype=tl.float32)
    top_i = tl.zeros((TOP_K_P2,), dtype=tl.int32)
    for i in tl.static_range(TOP_K):
        best = tl.max(p, axis=0)
        idx = tl.min(tl.where(p == best, e, E_P2), axis=0)
        top_w = tl.where(k == i, best, top_w)
        top_i = tl.where(k == i, idx, top_i)
        p = tl.where(e == idx, -1.0, p)
    if NORM_P == 1.0:
        top_w = top_w / tl.sum(top_w, axis=0)
    elif NORM_P > 0:
        top_w = top_w / tl.exp(tl.log(tl.sum(tl.exp(NORM_P * tl.log(top_w)), axis=0)) / NORM_P)
    tl.store(weights_ptr + t * TOP_K + k, top_w, mask=k < TOP_K)
    tl.store(ids_ptr + t * TOP_K + k, top_i, mask=k < TOP_K)


@triton.jit
def align_kernel(ids_ptr, num_pairs, sorted_ids_ptr, block_experts_ptr, num_sorted_ptr, num_slots,
                 E: tl.constexpr, E_P2: tl.constexpr, EXPERT_OFFSET: tl.constexpr, BLOCK_M: tl.constexpr,
                 CHUNK: tl.constexpr, PDL: tl.constexpr):
    """One program. Pairs routed to expert EXPERT_OFFSET + e go, in pair order, to a run that starts
    at a multiple of BLOCK_M; padding slots hold num_pairs; experts of other ranks are left out."""
    wait_for_inputs(PDL)
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


def route(x: torch.Tensor, router: torch.Tensor, top_k: int, norm_p: float | None):
    """x [N,H], router [E,H] float32 -> (weights [N,K] float32, expert ids [N,K] int32). The logits are
    the model's own float32 product (cuBLAS), so the experts chosen are the plain path's."""
    logits = F.linear(x.float(), router)  # [N,E]
    n, e = logits.shape
    weights = torch.empty(n, top_k, dtype=torch.float32, device=x.device)
    ids = torch.empty(n, top_k, dtype=torch.int32, device=x.device)
    route_kernel[(n,)](logits, weights, ids, E=e, E_P2=triton.next_power_of_2(e), TOP_K=top_k,
                       TOP_K_P2=triton.next_power_of_2(top_k), NORM_P=float(norm_p or 0.0), num_warps=1, **pdl(x))
    return weights, ids


def align(ids: torch.Tensor, num_experts: int, expert_offset: int, block_m: int):
    """ids [N,K] -> (sorted_ids [slots], block_experts [slots / block_m], num_sorted [1]); slots is the
    most any routing of N*K pairs over num_experts experts can need: each expert a pair or more takes
    up to block_m - 1 slots of padding, and no more experts than pairs take any (one token: 4 blocks
    where 16 experts would give 16, the GEMMs' programs of the other 12 exiting at once)."""
    num_pairs = ids.numel()
    slots = triton.cdiv(num_pairs + min(num_experts, num_pairs) * (block_m - 1), block_m) * block_m
    sorted_ids = torch.empty(slots, dtype=torch.int32, device=ids.device)
    block_experts = torch.empty(slots // block_m, dtype=torch.int32, device=ids.device)
    num_sorted = torch.empty(1, dtype=torch.int32, device=ids.device)
    chunk = min(512, max(16, triton.next_power_of_2(slots)))  # one pass of each loop up to 512 slots (decode)
    e_p2 = triton.next_power_of_2(num_experts)
    align_kernel[(1,)](ids, num_pairs, sorted_ids, block_experts, num_sorted, slots, E=num_experts, E_P2=e_p2,
                       EXPERT_OFFSET=expert_offset, BLOCK_M=block_m, CHUNK=chunk,
                       num_warps=1 if chunk * e_p2 <= 1024 else 8, **pdl(ids))
    return sorted_ids, block_experts, num_sorted


def expert_weights(module) -> Weights:
    """An ExpertLinear (float [El, out, in]) or WeightOnlyExpertLinear as the kernel reads it."""
    return Weights.of(module.weight, getattr(module, "scale", None), getattr(module, "precision", None),
                      getattr(module, "in_features", None))


class FusedMoE(MoE):
    """The model's MoE, same parameters and names; `forward` runs the five launches above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N,H]
        n, k = x.shape[0], self.top_k
        fc, proj = expert_weights(self.fc), expert_weights(self.proj)
        num_experts = fc.tensor.shape[0]
        up_config, down_config = moe_config(n, k, fc, gated=True), moe_config(n, k, proj)
        if up_config.block_m != down_config.block_m:  # one block_m for the pairs both GEMMs read
            up_config = moe_config(n, k, fc, gated=True, one_row=False)
            down_config = moe_config(n, k, proj, one_row=False)
        weights, ids = route(x, self.router.weight, k, self.norm_p)
        sorted_ids, block_experts, num_sorted = align(ids, num_experts, self.expert_offset, up_config.block_m)
        moe = (sorted_ids, block_experts, num_sorted, n * k)
        act = self.activation(x, fc, up_config, moe)  # [N*K,Il]
        y = self.down_buffer(n * k, x, down_config)  # [S,N*K,H]
        gemm(act, proj, y, down_config, moe=moe, topk_weights=weights)
        return sum_splits(y, x.dtype, rows_per_out=k).view(shape)  # the splits and each token's top-k

    def activation(self, x: torch.Tensor, fc: Weights, config: GemmConfig, moe: tuple) -> torch.Tensor:
        """SwiGLU of gate+up for every pair: in the GEMM, or after the sum of its K-split partials."""
        num_pairs = moe[3]
        if config.split_k == 1:
            act = torch.empty(num_pairs, self.ffn_size, dtype=x.dtype, device=x.device)
            return gemm(x, fc, act, config, moe=moe, x_row_div=self.top_k, gated=True)
        parts = torch.empty(config.split_k, num_pairs, 2 * self.ffn_size, dtype=torch.float32, device=x.device)
        gemm(x, fc, parts, config, moe=moe, x_row_div=self.top_k, gated=True)
        return sum_splits(parts, x.dtype, gated=True)

    def down_buffer(self, num_pairs: int, x: torch.Tensor, config: GemmConfig) -> torch.Tensor:
        """Zeros where pairs may go to another rank's experts (never written here), else uninitialized."""
        dtype = torch.float32 if config.split_k > 1 else x.dtype
        all_local = self.fc.weight.shape[0] == self.router.weight.shape[0]
        make = torch.empty if all_local else torch.zeros
        return make(config.split_k, num_pairs, x.shape[-1], dtype=dtype, device=x.device)
