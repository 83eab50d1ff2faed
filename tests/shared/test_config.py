"""The HF config.json reader: real DBRX files and transformers' save_pretrained output."""

import json

import pytest

from dbrx_serve.shared.config import DbrxConfig
from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.testing import TinySpec, hf_config

# databricks/dbrx-instruct's config.json (March 2024): theta in attn_config, no normalize key.
DBRX_INSTRUCT = {
    "architectures": ["DbrxForCausalLM"],
    "attn_config": {"clip_qkv": 8, "kv_n_heads": 8, "model_type": "", "rope_theta": 500000},
    "d_model": 6144, "emb_pdrop": 0.0,
    "ffn_config": {"ffn_hidden_size": 10752, "model_type": "", "moe_jitter_eps": 0.01,
                   "moe_loss_weight": 0.05, "moe_num_experts": 16, "moe_top_k": 4},
    "initializer_range": 0.02, "max_seq_len": 32768, "model_type": "dbrx", "n_heads": 48, "n_layers": 40,
    "output_router_logits": False, "resid_pdrop": 0.0, "router_aux_loss_coef": 0.05,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.38.2",
    "use_cache": True, "vocab_size": 100352,
}


def test_reads_the_real_dbrx_instruct_config():
    cfg = DbrxConfig.from_hf_dict(DBRX_INSTRUCT)
    assert (cfg.d_model, cfg.n_heads, cfg.kv_n_heads, cfg.n_layers, cfg.head_dim) == (6144, 48, 8, 40, 128)
    assert (cfg.moe_num_experts, cfg.moe_top_k, cfg.ffn_hidden_size) == (16, 4, 10752)
    assert cfg.rope_theta == 500000.0 and cfg.clip_qkv == 8 and cfg.moe_normalize_expert_weights == 1.0
    assert cfg.vocab_size == 100352 and cfg.max_seq_len == 32768 and cfg.torch_dtype == "bfloat16"


def test_reads_transformers_save_pretrained_output(tmp_path):
    spec = TinySpec(rope_theta=12345.0, clip_qkv=None, moe_normalize_expert_weights=None, moe_top_k=1)
    hf_config(spec).save_pretrained(tmp_path)
    cfg = DbrxConfig.from_hf_dir(tmp_path)
    assert cfg.rope_theta == 12345.0 and cfg.clip_qkv is None and cfg.moe_normalize_expert_weights is None
    assert (cfg.d_model, cfg.kv_n_heads, cfg.moe_top_k) == (spec.d_model, spec.kv_n_heads, 1)


def test_prefers_rope_parameters_over_attn_config():
    hf = dict(DBRX_INSTRUCT, rope_parameters={"rope_type": "default", "rope_theta": 7.0})
    assert DbrxConfig.from_hf_dict(hf).rope_theta == 7.0


@pytest.mark.parametrize("change,message", [
    ({"model_type": "llama"}, "not a DBRX config"),
    ({"n_heads": 7}, "not a multiple of n_heads"),
    ({"d_model": None}, "d_model must be a positive integer"),
    ({"ffn_config": {"moe_num_experts": 2, "moe_top_k": 4}}, "exceeds moe_num_experts"),
    ({"attn_config": {"kv_n_heads": 5}}, "not a multiple of kv_n_heads"),
])
def test_refuses_bad_configs_with_a_message(change, message):
    with pytest.raises(InvalidInput, match=message):
        DbrxConfig.from_hf_dict(dict(DBRX_INSTRUCT, **change))


def test_missing_or_broken_config_json(tmp_path):
    with pytest.raises(InvalidInput, match="config.json is missing"):
        DbrxConfig.from_hf_dir(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InvalidInput, match="not valid JSON"):
        DbrxConfig.from_hf_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in DBRX_INSTRUCT.items() if k != "n_layers"}))
    with pytest.raises(InvalidInput, match="n_layers"):
        DbrxConfig.from_hf_dir(tmp_path)


def test_from_checkpoint_dict_reads_back_what_the_converter_writes():
    """The checkpoint config (docs/trtllm-checkpoint.md) of dbrx-instruct gives the same DbrxConfig."""
    from dbrx_serve.services.converter.checkpoint_config import checkpoint_config
    from dbrx_serve.shared.mapping import Mapping

    cfg = DbrxConfig.from_hf_dict(DBRX_INSTRUCT)
    assert DbrxConfig.from_checkpoint_dict(checkpoint_config(cfg, Mapping(8, 1, 8, 1), "bfloat16")) == cfg
    trtllm = {k: v for k, v in checkpoint_config(cfg, Mapping(), "float16").items() if k != "dbrx_serve"}
    assert DbrxConfig.from_checkpoint_dict(trtllm).moe_normalize_expert_weights == 1.0
    trtllm["moe"] = dict(trtllm["moe"], normalization_mode=0)
    assert DbrxConfig.from_checkpoint_dict(trtllm).moe_normalize_expert_weights is None
    with pytest.raises(InvalidInput, match="architecture is 'LlamaForCausalLM'"):
        DbrxConfig.from_checkpoint_dict(dict(trtllm, architecture="LlamaForCausalLM"))
