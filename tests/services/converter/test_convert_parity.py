"""A converted checkpoint in our model against transformers' logits (the oracle):
float32 exactly (rel 1e-4), weight-only int8/int4 dequantized within a stated bound;
--quantize_at_build writes the float weights with quant_algo set."""

import dataclasses

import pytest
import torch

from dbrx_serve.shared.quantization import dequantize_weight
from dbrx_serve.shared.config import DbrxConfig
from dbrx_serve.shared.model import DbrxModel
from dbrx_serve.shared.testing import make_hf_model

from .conftest import SHARD_SPEC, read_checkpoint, run_convert

# Random tiny models are chaotic (a top-2 routing flip or a peaked softmax turns a 0.5% weight
# error into a 25% logit error), so the weight-only check uses a better-conditioned one: every
# expert active and the attention weights scaled by 0.1. On it (tokens() below) we measured
# ||logits - transformers'|| / ||transformers'||: int8 0.0141, int4 0.2614 (max-abs relative:
# 0.0199 and 0.399). The bounds leave about 2x / 1.5x room.
CONDITIONED_SPEC = dataclasses.replace(SHARD_SPEC, clip_qkv=8.0, moe_top_k=4)
DEQUANT_BOUND = {"int8": 0.03, "int4": 0.4}


@pytest.fixture(scope="module")
def conditioned_model(tmp_path_factory):
    hf = make_hf_model(CONDITIONED_SPEC)
    with torch.no_grad():
        for block in hf.transformer.blocks:
            block.norm_attn_norm.attn.Wqkv.weight.mul_(0.1)
            block.norm_attn_norm.attn.out_proj.weight.mul_(0.1)
    path = tmp_path_factory.mktemp("conditioned")
    hf.save_pretrained(path)
    return path, hf


def tokens(length: int = 24) -> torch.Tensor:
    return torch.randint(0, SHARD_SPEC.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got - ref).abs().max() / ref.abs().max()).item()


@torch.no_grad()
def logits_of(model_dir, tensors: dict) -> torch.Tensor:
    model = DbrxModel(DbrxConfig.from_hf_dir(model_dir)).eval()
    model.load_state_dict(tensors, strict=True)
    ids = tokens()
    return model(ids, torch.arange(ids.shape[1])[None])


def dequantized(tensors: dict, precision: str) -> dict:
    """A weight-only rank file back to float tensors [.., out, in]."""
    out = {}
    for name, tensor in tensors.items():
        if name.endswith("per_channel_scale"):
            continue
        scale = tensors.get(name.removesuffix("weight") + "per_channel_scale")
        out[name] = tensor if scale is None else dequantize_weight(tensor, scale, precision)
    return out


@torch.no_grad()
def test_float32_tp1_reproduces_transformers_logits(shard_model, tmp_path):
    model_dir, hf = shard_model
    config, ranks = read_checkpoint(run_convert(model_dir, tmp_path / "f32", dtype="float32"))
    assert config["dtype"] == "float32" and config["quantization"]["quant_algo"] is None
    assert relative_error(logits_of(model_dir, ranks[0]), hf(tokens()).logits) <= 1e-4


@pytest.mark.parametrize("precision", ["int8", "int4"])
@torch.no_grad()
def test_dequantized_weight_only_stays_close_to_transformers(precision, conditioned_model, tmp_path):
    model_dir, hf = conditioned_model
    config, ranks = read_checkpoint(run_convert(model_dir, tmp_path / precision, dtype="float32",
                                                use_weight_only=True, weight_only_precision=precision))
    assert config["quantization"]["quant_algo"] == {"int8": "W8A16", "int4": "W4A16"}[precision]
    assert config["dbrx_serve"]["weight_layout"] == "plain"
    assert ranks[0]["transformer.layers.0.mlp.fc.weight"].dtype == torch.int8
    ref = hf(tokens()).logits
    error = ((logits_of(model_dir, dequantized(ranks[0], precision)) - ref).norm() / ref.norm()).item()
    assert 0 < error <= DEQUANT_BOUND[precision]


def test_quantize_at_build_writes_float_weights_with_quant_algo(shard_model, tmp_path):
    model_dir, _ = shard_model
    _, plain = read_checkpoint(run_convert(model_dir, tmp_path / "plain", dtype="float16", tp_size=2))
    config, ranks = read_checkpoint(run_convert(model_dir, tmp_path / "qab", dtype="float16", tp_size=2,
                                                use_weight_only=True, weight_only_precision="int4",
                                                quantize_at_build=True))
    assert config["quantization"] == {"quant_algo": "W4A16", "kv_cache_quant_algo": None}
    for got, ref in zip(ranks, plain):
        assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
        assert got["transformer.layers.0.attention.qkv.weight"].dtype == torch.float16


def test_bfloat16_default_dtype_from_the_hf_config(shard_model, tmp_path):
    """No --dtype: the HF config's torch_dtype (float32 for these test models)."""
    config, ranks = read_checkpoint(run_convert(shard_model[0], tmp_path / "default"))
    assert config["dtype"] == DbrxConfig.from_hf_dir(shard_model[0]).torch_dtype
    config, ranks = read_checkpoint(run_convert(shard_model[0], tmp_path / "bf16", dtype="bfloat16"))
    assert ranks[0]["lm_head.weight"].dtype == torch.bfloat16
    assert ranks[0]["transformer.layers.0.mlp.router.weight"].dtype == torch.float32
