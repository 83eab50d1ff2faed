"""HF DBRX tensors -> one rank's float tensors of a TensorRT-LLM checkpoint.

The one place that knows the layout of docs/trtllm-checkpoint.md's float
table. The converter calls it per rank and layer; the reference path calls it
with the single-rank mapping to load a HF model into `DbrxModel`.
"""

from typing import Iterator

import torch

from .config import DbrxConfig
from .hf_checkpoint import GLOBAL_NAMES, HFCheckpoint, hf_names
from .mapping import Mapping


def kv_head_range(cfg: DbrxConfig, mapping: Mapping, tp_rank: int) -> range:
    """The kv heads a tp rank holds: its share, or one replicated head when tp > kv heads."""
    t, nkv = mapping.tp_size, cfg.kv_n_heads
    if t <= nkv:
        return range(tp_rank * nkv // t, (tp_rank + 1) * nkv // t)
    head = tp_rank * nkv // t
    return range(head, head + 1)


def shard_qkv(wqkv: torch.Tensor, cfg: DbrxConfig, mapping: Mapping, tp_rank: int) -> torch.Tensor:
    """Rows [Q_r; K_r; V_r] of HF's Wqkv [nh*hd + 2*nkv*hd, H]."""
    hd, q_rows = cfg.head_dim, cfg.n_heads * cfg.head_dim
    q_per_rank = q_rows // mapping.tp_size
    q = wqkv[tp_rank * q_per_rank:(tp_rank + 1) * q_per_rank]
    heads = kv_head_range(cfg, mapping, tp_rank)
    kv_rows = slice(heads.start * hd, heads.stop * hd)
    k = wqkv[q_rows:q_rows + cfg.kv_n_heads * hd][kv_rows]
    v = wqkv[q_rows + cfg.kv_n_heads * hd:][kv_rows]
    return torch.cat([q, k, v], dim=0)


def shard_experts(ckpt: HFCheckpoint, names: dict, mapping: Mapping, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fc [El, 2*Il, H] = concat(v1, w1) on dim -2; proj [El, H, Il] = w2.T, for this rank's experts and
    columns, read one expert's rows at a time into the two outputs (no whole-layer copy in memory)."""
    cfg = ckpt.config
    n_local = cfg.moe_num_experts // mapping.moe_ep_size
    ffn_local = cfg.ffn_hidden_size // mapping.moe_tp_size
    first = mapping.moe_ep_rank(rank) * n_local
    cols = slice(mapping.moe_tp_rank(rank) * ffn_local, (mapping.moe_tp_rank(rank) + 1) * ffn_local)

    def rows(role: str, e: int) -> torch.Tensor:  # [Il, H]: expert e's rows `cols` of HF's [E*I, H]
        I = cfg.ffn_hidden_size
        return ckpt.get_rows(names[role], e * I + cols.start, e * I + cols.stop)

    fc = proj = None
    for j in range(n_local):
        v1, w1, w2 = rows("v1", first + j), rows("w1", first + j), rows("w2", first + j)
        if fc is None:
            fc = v1.new_empty(n_local, 2 * ffn_local, cfg.d_model)
            proj = w2.new_empty(n_local, cfg.d_model, ffn_local)
        fc[j, :ffn_local], fc[j, ffn_local:], proj[j] = v1, w1, w2.T
    return fc, proj


def layer_tensors(ckpt: HFCheckpoint, mapping: Mapping, rank: int, layer: int, local: int,
                  dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Float tensors of global layer `layer`, named with local index `local`."""
    cfg, names, tp_rank = ckpt.config, hf_names(layer), mapping.tp_rank(rank)
    h_per_rank = cfg.d_model // mapping.tp_size
    fc, proj = shard_experts(ckpt, names, mapping, rank)
    prefix = f"transformer.layers.{local}"
    tensors = {
        f"{prefix}.input_layernorm.weight": ckpt.get(names["norm_1"]).to(dtype),
        f"{prefix}.attention.qkv.weight": shard_qkv(ckpt.get(names["Wqkv"]), cfg, mapping, tp_rank).to(dtype),
        f"{prefix}.attention.dense.weight":
            ckpt.get(names["out_proj"])[:, tp_rank * h_per_rank:(tp_rank + 1) * h_per_rank].to(dtype),
        f"{prefix}.post_layernorm.weight": ckpt.get(names["norm_2"]).to(dtype),
        f"{prefix}.mlp.router.weight": ckpt.get(names["router"]).to(torch.float32),
        f"{prefix}.mlp.fc.weight": fc.to(dtype),
        f"{prefix}.mlp.proj.weight": proj.to(dtype),
    }
    return {name: t.contiguous() for name, t in tensors.items()}


def lm_head_rows(ckpt: HFCheckpoint, tp_size: int, tp_rank: int) -> torch.Tensor:
    """Row chunk `tp_rank` of lm_head (only those rows are read), zero-padded so that the
    chunks make tp_size * ceil(V / tp_size) rows (only the last chunk gets zero rows)."""
    vocab = ckpt.config.vocab_size
    rows = -(-vocab // tp_size)
    start, stop = min(tp_rank * rows, vocab), min((tp_rank + 1) * rows, vocab)
    part = ckpt.get_rows(GLOBAL_NAMES["lm_head"], start, stop)  # [stop-start, H]
    if part.shape[0] == rows:
        return part
    padded = part.new_zeros(rows, part.shape[1])
    padded[:part.shape[0]] = part
    return padded


def rank_tensors(ckpt: HFCheckpoint, mapping: Mapping, rank: int,
                 dtype: torch.dtype) -> Iterator[dict[str, torch.Tensor]]:
    """One rank's float checkpoint, a group of tensors at a time (embedding, each layer, head)."""
    if mapping.is_first_pp(rank):
        yield {"transformer.vocab_embedding.weight": ckpt.get(GLOBAL_NAMES["wte"]).to(dtype).contiguous()}
    for local, layer in enumerate(mapping.layers(rank, ckpt.config.n_layers)):
        yield layer_tensors(ckpt, mapping, rank, layer, local, dtype)
    if mapping.is_last_pp(rank):
        head = lm_head_rows(ckpt, mapping.tp_size, mapping.tp_rank(rank))
        yield {"transformer.ln_f.weight": ckpt.get(GLOBAL_NAMES["norm_f"]).to(dtype).contiguous(),
               "lm_head.weight": head.to(dtype).contiguous()}
