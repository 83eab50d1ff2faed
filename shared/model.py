"""The DBRX forward pass in plain PyTorch: the whole model, top to bottom.

Parameter names are those of a TensorRT-LLM checkpoint rank file
(docs/trtllm-checkpoint.md), so a rank's tensors load with `load_state_dict`.
Sharding, quantization and fast kernels are applied from outside: they change
the sizes in `LocalShape`, swap `ExpertLinear`/`nn.Linear` modules, or pass a
different `attend` (KV cache); `forward` never branches on them.

Symbols in shape comments: B batch, T new tokens, S cached positions, H d_model,
nh/nkv local (kv) heads, hd head dim, El local experts, Il local FFN size,
N = B*T tokens, K top-k, V local vocab rows.
"""

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import DbrxConfig
from .mapping import Mapping


@dataclass(frozen=True)
class LocalShape:
    """The slice of the model one rank holds (everything, for a single rank)."""

    n_heads: int
    n_kv_heads: int
    n_experts: int
    expert_offset: int
    ffn_size: int
    layers: range
    has_embedding: bool
    has_lm_head: bool
    vocab_rows: int

    @classmethod
    def of(cls, cfg: DbrxConfig, mapping: Mapping = Mapping(), rank: int = 0) -> "LocalShape":
        t = mapping.tp_size
        n_experts = cfg.moe_num_experts // mapping.moe_ep_size
        return cls(
            n_heads=cfg.n_heads // t,
            n_kv_heads=max(cfg.kv_n_heads // t, 1),
            n_experts=n_experts,
            expert_offset=mapping.moe_ep_rank(rank) * n_experts,
            ffn_size=cfg.ffn_hidden_size // mapping.moe_tp_size,
            layers=mapping.layers(rank, cfg.n_layers),
            has_embedding=mapping.is_first_pp(rank),
            has_lm_head=mapping.is_last_pp(rank),
            vocab_rows=-(-cfg.vocab_size // t),
        )


# An attention function: (layer, q [B,T,nh,hd], k, v [B,T,nkv,hd], positions [B,T]) -> [B,T,nh,hd].
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def causal_attention(layer: int, q, k, v, positions) -> torch.Tensor:
    """Attention within the new tokens only (no cache): a whole prompt at once."""
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=True, enable_gqa=True)
    return y.transpose(1, 2)


def rotary(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """GPT-NeoX rotary embeddings (rotate-half) with base `theta`: cos, sin [B,T,1,hd]."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions[..., None].float() * inv_freq  # [B,T,hd/2]
    emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]  # [B,T,1,hd]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: DbrxConfig, shape: LocalShape, layer: int):
        super().__init__()
        self.layer, self.clip_qkv = layer, cfg.clip_qkv
        self.n_heads, self.n_kv_heads, self.head_dim = shape.n_heads, shape.n_kv_heads, cfg.head_dim
        qkv_rows = (shape.n_heads + 2 * shape.n_kv_heads) * cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, qkv_rows, bias=False)  # Wqkv: rows [Q; K; V]
        self.dense = nn.Linear(shape.n_heads * cfg.head_dim, cfg.d_model, bias=False)  # out_proj

    def forward(self, x, cos, sin, positions, attend: Attend) -> torch.Tensor:
        B, T, _ = x.shape
        qkv = self.qkv(x)  # [B,T,(nh+2nkv)*hd]
        if self.clip_qkv is not None:
            qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        kv_size = self.n_kv_heads * self.head_dim
        q, k, v = qkv.split([self.n_heads * self.head_dim, kv_size, kv_size], dim=-1)
        q = apply_rotary(q.view(B, T, self.n_heads, self.head_dim), cos, sin)  # [B,T,nh,hd]
        k = apply_rotary(k.view(B, T, self.n_kv_heads, self.head_dim), cos, sin)  # [B,T,nkv,hd]
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        y = attend(self.layer, q, k, v, positions)  # [B,T,nh,hd]
        return self.dense(y.reshape(B, T, -1))  # [B,T,H] (a partial sum under tensor parallelism)


class ExpertLinear(nn.Module):
    """Stacked per-expert weights [El, out, in]; `forward(x, j)` is x @ weight[j].T."""

    def __init__(self, n_experts: int, out_features: int, in_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_experts, out_features, in_features))

    def forward(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        return x @ self.weight[expert].T


class MoE(nn.Module):
    """DBRX's router (softmax, top-k, p-norm) and SwiGLU experts (fc = [v1; w1], proj = w2.T)."""

    def __init__(self, cfg: DbrxConfig, shape: LocalShape):
        super().__init__()
        self.top_k, self.norm_p = cfg.moe_top_k, cfg.moe_normalize_expert_weights
        self.expert_offset, self.ffn_size = shape.expert_offset, shape.ffn_size
        self.router = nn.Linear(cfg.d_model, cfg.moe_num_experts, bias=False, dtype=torch.float32)
        self.fc = ExpertLinear(shape.n_experts, 2 * shape.ffn_size, cfg.d_model)
        self.proj = ExpertLinear(shape.n_experts, cfg.d_model, shape.ffn_size)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(self.router(x.float()), dim=-1)  # [N,E], float32
        weights, experts = torch.topk(probs, self.top_k, dim=-1)  # [N,K]
        if self.norm_p is not None:
            weights = weights / torch.norm(weights, p=self.norm_p, dim=-1, keepdim=True)
        return weights, experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N,H]
        weights, experts = self.route(x)
        out = torch.zeros_like(x)
        for j in range(self.fc.weight.shape[0]):
            tokens, slot = torch.where(experts == self.expert_offset + j)
            if tokens.numel() == 0:
                continue
            up, gate = self.fc(x[tokens], j).split(self.ffn_size, dim=-1)  # [n,Il] each: v1 then w1
            y = self.proj(up * F.silu(gate), j)  # [n,H]
            out.index_add_(0, tokens, y * weights[tokens, slot, None].to(x.dtype))
        return out.view(shape)  # a partial sum under expert or tensor parallelism


class ResidualLayerNorm(nn.LayerNorm):
    """LayerNorm of a residual sum: `forward(x, delta)` -> (h = x + delta, LayerNorm(h)) (delta None: h is
    x); a GPU backend does both in one kernel."""

    def forward(self, x: torch.Tensor, delta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        h = x if delta is None else x + delta
        return h, super().forward(h)


class Block(nn.Module):
    """`forward(x, delta, ...)` on the hidden states x + delta (delta None: x) -> (h, MoE output), whose sum
    is the block's output: the next block's first LayerNorm adds them up (one kernel on a GPU, as after
    attention), and DbrxModel adds the last pair."""

    def __init__(self, cfg: DbrxConfig, shape: LocalShape, layer: int):
        super().__init__()
        self.input_layernorm = ResidualLayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=False)  # norm_1
        self.attention = Attention(cfg, shape, layer)
        self.post_layernorm = ResidualLayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=False)  # norm_2
        self.mlp = MoE(cfg, shape)

    def forward(self, x, delta, cos, sin, positions, attend: Attend) -> tuple[torch.Tensor, torch.Tensor]:
        x, normed = self.input_layernorm(x, delta)
        h, normed = self.post_layernorm(x, self.attention(normed, cos, sin, positions, attend))
        return h, self.mlp(normed)


def run_blocks(blocks, x: torch.Tensor, cos, sin, positions, attend: Attend) -> torch.Tensor:
    """The blocks in turn on hidden states x [B,T,H] -> their output."""
    delta = None
    for block in blocks:
        x, delta = block(x, delta, cos, sin, positions, attend)
    return x if delta is None else x + delta


class DbrxModel(nn.Module):
    """One rank's part of DBRX; a single rank holds the whole model.

    `forward(tokens_or_hidden, positions, attend)`: token ids [B,T] on the first
    pipeline stage, hidden states [B,T,H] on the others; returns float32 logits
    [B,T,V] on the last stage, hidden states otherwise.
    """

    def __init__(self, cfg: DbrxConfig, shape: LocalShape | None = None):
        super().__init__()
        shape = shape or LocalShape.of(cfg)
        self.cfg, self.shape = cfg, shape
        self.transformer = nn.Module()
        if shape.has_embedding:
            self.transformer.vocab_embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)  # wte
        self.transformer.layers = nn.ModuleList(Block(cfg, shape, i) for i in range(len(shape.layers)))
        if shape.has_lm_head:
            self.transformer.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=False)  # norm_f
            self.lm_head = nn.Linear(cfg.d_model, shape.vocab_rows, bias=False)

    def forward(self, inputs: torch.Tensor, positions: torch.Tensor,
                attend: Attend = causal_attention) -> torch.Tensor:
        x = self.transformer.vocab_embedding(inputs) if self.shape.has_embedding else inputs  # [B,T,H]
        cos, sin = rotary(positions, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        x = run_blocks(self.transformer.layers, x, cos, sin, positions, attend)
        if not self.shape.has_lm_head:
            return x
        return self.lm_head(self.transformer.ln_f(x)).float()  # [B,T,V]


def keys_from_zero(S: int, device) -> torch.Tensor:
    return torch.arange(S, device=device)


class DenseKVCache:
    """A contiguous cache [layers, B, S, nkv, hd] per batch row: the reference
    path (`dbrx run --hf_model_dir`, calibration). The engine's paged cache
    offers the same `attend`."""

    def __init__(self, model: DbrxModel, batch_size: int, max_seq_len: int):
        p = next(model.parameters())
        shape = (len(model.shape.layers), batch_size, max_seq_len, model.shape.n_kv_heads, model.cfg.head_dim)
        self.k = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.v = torch.zeros(shape, dtype=p.dtype, device=p.device)

    def attend(self, layer: int, q, k, v, positions) -> torch.Tensor:
        rows = torch.arange(q.shape[0], device=q.device)[:, None]  # [B,1]
        self.k[layer][rows, positions] = k
        self.v[layer][rows, positions] = v
        S = int(positions.max()) + 1
        if S == q.shape[1] and bool((positions == keys_from_zero(S, q.device)).all()):  # a whole prompt
            return causal_attention(layer, q, k, v, positions)
        keys = keys_from_zero(S, q.device)
        mask = keys[None, None, :] <= positions[:, :, None]  # [B,T,S]: key j visible from position p iff j <= p
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), self.k[layer, :, :S].transpose(1, 2), self.v[layer, :, :S].transpose(1, 2),
            attn_mask=None if bool(mask.all()) else mask[:, None], enable_gqa=True)  # [B,nh,T,hd]
        return y.transpose(1, 2)
