"""The paged KV cache: per layer, K and V tensors of [num_blocks, tokens_per_block,
nkv, hd], and an `attend` for DbrxModel over the block tables of the step's
sequences. The model never learns about pages: it calls `attend(layer, q, k, v,
positions)` as it would the dense cache's.

A step's tokens are flattened into one row ([1, N], no padding); `prepare`
reads the step's plan (plan.py): which spans of that row belong to which
sequence, where their new K/V go (slots) and which slots hold their context.
This is the plain path (the CPU's); kernels/attention.py is the CUDA one. With per-layer K and V scales
(kv_cache_scales.json) the cache stores int8: round(x / scale) clamped to
[-127, 127], dequantized on read.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dbrx_serve.shared.kv_scales import KVScales

from .plan import StepPlan


@dataclass(frozen=True)
class Span:
    """One sequence's tokens in the flattened step: [start, start + length) of the row."""

    start: int
    length: int
    context_slots: torch.Tensor  # [S] slots of positions 0..S-1, S = cached + new tokens
    positions: torch.Tensor  # [length] positions of the new tokens


class PagedKVCache:
    def __init__(self, num_layers: int, num_blocks: int, tokens_per_block: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device, scales: KVScales | None = None):
        self.tokens_per_block, self.scales = tokens_per_block, scales
        shape = (num_layers, num_blocks * tokens_per_block, n_kv_heads, head_dim)  # blocks flattened into slots
        store = torch.int8 if scales else dtype
        self.k = torch.zeros(shape, dtype=store, device=device)
        self.v = torch.zeros(shape, dtype=store, device=device)
        self.dtype, self.spans, self.write_slots = dtype, [], None

    @staticmethod
    def bytes_per_block(num_layers: int, tokens_per_block: int, n_kv_heads: int, head_dim: int,
                        element_size: int) -> int:
        return 2 * num_layers * tokens_per_block * n_kv_heads * head_dim * element_size

    def slots(self, block_table: torch.Tensor, length: int) -> torch.Tensor:
        """The slots of positions 0..length-1 of a sequence with this block table."""
        positions = torch.arange(length)
        blocks = block_table[positions // self.tokens_per_block].long()
        return (blocks * self.tokens_per_block + positions % self.tokens_per_block).to(self.k.device)

    decode_block_q = 1  # what the step tensors' program table is cut by (unused here)

    def prepare(self, plan: StepPlan, num_programs: int = 0, block_q: int = 1) -> None:
        """Describe the step before the forward pass: spans, and where new K/V go."""
        tables, spans = torch.from_numpy(plan.block_tables), []
        for b in range(plan.num_seqs):
            start, stop, seq_len = int(plan.query_start[b]), int(plan.query_start[b + 1]), int(plan.seq_lens[b])
            length = stop - start
            positions = torch.arange(seq_len - length, seq_len, device=self.k.device)
            spans.append(Span(start, length, self.slots(tables[b], seq_len), positions))
        self.spans = spans
        self.write_slots = torch.from_numpy(plan.slots).long().to(self.k.device)  # [N]

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k[layer][self.write_slots] = self.quantize(k, self.scales.k[layer] if self.scales else None)
        self.v[layer][self.write_slots] = self.quantize(v, self.scales.v[layer] if self.scales else None)

    def quantize(self, x: torch.Tensor, scale: float | None) -> torch.Tensor:
        if scale is None:
            return x.to(self.k.dtype)
        return torch.round(x.float() / scale).clamp(-127, 127).to(torch.int8)

    def read(self, cache: torch.Tensor, slots: torch.Tensor, scale: float | None) -> torch.Tensor:
        x = cache[slots]  # [S,nkv,hd]
        return x if scale is None else (x.float() * scale).to(self.dtype)

    def attend(self, layer: int, q, k, v, positions) -> torch.Tensor:
        """q [1,N,nh,hd], k, v [1,N,nkv,hd] of the flattened step -> [1,N,nh,hd]."""
        self.store(layer, k[0], v[0])
        k_scale = self.scales.k[layer] if self.scales else None
        v_scale = self.scales.v[layer] if self.scales else None
        out = [self.attend_span(q[0, s.start:s.start + s.length], s,
                                self.read(self.k[layer], s.context_slots, k_scale),
                                self.read(self.v[layer], s.context_slots, v_scale)) for s in self.spans]
        return torch.cat(out)[None]

    @staticmethod
    def attend_span(q, span: Span, keys, values) -> torch.Tensor:
        """One sequence: q [T,nh,hd] over its context keys/values [S,nkv,hd]; key j is visible
        from position p iff j <= p."""
        S = keys.shape[0]
        mask = torch.arange(S, device=q.device)[None, :] <= span.positions[:, None]  # [T,S]
        y = F.scaled_dot_product_attention(q.transpose(0, 1)[None], keys.transpose(0, 1)[None],
                                           values.transpose(0, 1)[None], attn_mask=mask[None, None],
                                           enable_gqa=True)  # [1,nh,T,hd]
        return y[0].transpose(0, 1)  # [T,nh,hd]
