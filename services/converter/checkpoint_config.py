"""The checkpoint's config.json, key for key as docs/trtllm-checkpoint.md shows it."""

from dbrx_serve.shared.config import DbrxConfig
from dbrx_serve.shared.mapping import Mapping
from dbrx_serve.shared.quantization import WeightOnly

FORMAT_VERSION = 1


def checkpoint_config(cfg: DbrxConfig, mapping: Mapping, dtype: str, logits_dtype: str = "float32",
                      weight_only: WeightOnly | None = None, int8_kv_cache: bool = False) -> dict:
    return {
        "architecture": "DbrxForCausalLM",
        "dtype": dtype,
        "logits_dtype": logits_dtype,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_n_heads,
        "max_position_embeddings": cfg.max_seq_len,
        "norm_epsilon": cfg.norm_eps,
        "position_embedding_type": "rope_gpt_neox",
        "hidden_act": "swiglu",
        "rotary_base": cfg.rope_theta,
        "rotary_scaling": None,
        "clip_qkv": cfg.clip_qkv,
        "quantization": {**(weight_only.config() if weight_only else {"quant_algo": None}),
                         "kv_cache_quant_algo": "INT8" if int8_kv_cache else None},
        "moe": {"num_experts": cfg.moe_num_experts, "top_k": cfg.moe_top_k,
                "normalization_mode": 0 if cfg.moe_normalize_expert_weights is None else 1},
        "mapping": mapping.to_dict(),
        "dense_context_fmha": False,
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "share_embedding_table": False,
        "disable_weight_only_quant_plugin": False,
        "dbrx_serve": {"format_version": FORMAT_VERSION, "weight_layout": "plain",
                       "moe_normalize_expert_weights": cfg.moe_normalize_expert_weights},
    }
