"""Weight-only engines hold the checkpoint's int8 tensors, and its int4 values in the
GPU's tiles (per channel or group-wise); the --quantize_at_build form gives the same
engine as a weight-only checkpoint;
TensorRT-LLM's own checkpoints: float ones (no manifest) are built, its
pre-shuffled quantized ones are refused with the spec's message."""

import pytest
import torch

from dbrx_serve.services.builder.layout import float_layout, weight_only_layout
from dbrx_serve.shared.tiles import untile
from dbrx_serve.shared.quantization import QUANTIZED_SUFFIXES, dequantize_weight
from dbrx_serve.shared.weight_only import engine_weight, halves, weight_layout
from dbrx_serve.shared.config import DbrxConfig
from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.mapping import Mapping

from dbrx_serve.services.converter.convert import convert
from dbrx_serve.services.converter.options import ConvertOptions
from dbrx_serve.shared.testing import TinySpec, save_tiny_model

from .conftest import copy_without_manifest, leftovers, read_engine, read_ranks, run_build

GEMM = "transformer.layers.0.mlp.fc"
# Input widths of whole 64-row groups at tp2: H 128, H/t 64, Il 64.
GROUPED_SPEC = TinySpec(d_model=128, n_heads=4, kv_n_heads=2, n_layers=2, ffn_hidden_size=128, moe_num_experts=4,
                        moe_top_k=2, vocab_size=511, seed=5)


def as_engine_holds(tensors: dict, precision: str) -> dict:
    return {k: engine_weight(t, precision, halves(k)) if k.endswith(QUANTIZED_SUFFIXES) else t
            for k, t in tensors.items()}


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_weight_only_engine_holds_the_checkpoints_values(precision, checkpoints, tmp_path):
    """int8 and int4 in tiles (the experts' gate+up padded by halves: Il 16 at tp2), which give the
    checkpoint's bytes back."""
    ckpt = checkpoints(tp_size=2, use_weight_only=True, weight_only_precision=precision)
    config, ranks = read_engine(run_build(ckpt, tmp_path / "engine"))
    assert config["pretrained_config"]["quantization"]["quant_algo"] == {"int8": "W8A16", "int4": "W4A16"}[precision]
    assert config["build_config"]["weight_layout"] == weight_layout(precision) == {"int8": "int8_tiles",
                                                                                  "int4": "int4_tiles_v2"}[precision]
    cfg = DbrxConfig.from_checkpoint_dict(config["pretrained_config"])
    for rank, (got, want) in enumerate(zip(ranks, read_ranks(ckpt, 2))):
        layout = weight_only_layout(float_layout(cfg, Mapping(2, 1, 2, 1), rank, torch.float32), precision,
                                    engine=True)
        assert {k: (t.dtype, tuple(t.shape)) for k, t in got.items()} == layout
        assert all(torch.equal(got[k], w) for k, w in as_engine_holds(want, precision).items())
    bits = 4 if precision == "int4" else 8
    fc = read_ranks(ckpt, 2)[0][f"{GEMM}.weight"]  # [El, H, 2 Il * bits / 8]
    assert torch.equal(untile(ranks[0][f"{GEMM}.weight"], bits, fc.shape[-1] * 8 // bits, fc.shape[-2], 2), fc)
    assert ranks[0][f"{GEMM}.weight"].dtype == torch.int8
    assert ranks[0]["transformer.layers.0.mlp.router.weight"].dtype == torch.float32


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantize_at_build_equals_a_weight_only_checkpoint(precision, checkpoints, tmp_path):
    plain = checkpoints(tp_size=2, use_weight_only=True, weight_only_precision=precision)
    at_build = checkpoints(tp_size=2, use_weight_only=True, weight_only_precision=precision, quantize_at_build=True)
    assert read_ranks(at_build, 2)[0][f"{GEMM}.weight"].dtype == torch.float32
    _, want = read_engine(run_build(plain, tmp_path / "plain"))
    _, got = read_engine(run_build(at_build, tmp_path / "at-build", workers=2))
    for g, w in zip(got, want):
        assert g.keys() == w.keys() and all(torch.equal(g[k], w[k]) for k in w)
    float_fc = read_ranks(at_build, 2)[0][f"{GEMM}.weight"]  # [El, 2 Il, H]
    q = got[0][f"{GEMM}.weight"]
    q = untile(q, 4 if precision == "int4" else 8, *float_fc.shape[-2:], halves=2)
    back = dequantize_weight(q, got[0][f"{GEMM}.per_channel_scale"], precision)
    assert back.shape == float_fc.shape


def drop_our_section(config: dict) -> None:
    del config["dbrx_serve"]


def test_trtllm_quantized_checkpoint_is_refused_with_the_spec_message(checkpoints, tmp_path):
    ckpt = copy_without_manifest(checkpoints(use_weight_only=True), tmp_path / "trtllm-int8", drop_our_section)
    with pytest.raises(InvalidInput) as error:
        run_build(ckpt, tmp_path / "engine")
    message = str(error.value)
    assert "pre-shuffled" in message and "convert from the HF model" in message and "float checkpoint" in message
    assert leftovers(tmp_path / "engine") == []


def test_trtllm_float_checkpoint_without_manifest_is_built(checkpoints, tmp_path):
    """TensorRT-LLM's converter writes no manifest and no dbrx_serve section (p-norm from normalization_mode)."""
    ckpt = copy_without_manifest(checkpoints(tp_size=2), tmp_path / "trtllm-float", drop_our_section)
    config, ranks = read_engine(run_build(ckpt, tmp_path / "engine"))
    assert "dbrx_serve" not in config["pretrained_config"]
    assert DbrxConfig.from_checkpoint_dict(config["pretrained_config"]).moe_normalize_expert_weights == 1.0
    for got, want in zip(ranks, read_ranks(ckpt, 2)):
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert not (tmp_path / "engine" / "tokenizer").exists()  # no manifest: no HF dir to take it from


def test_trtllm_quantize_at_build_form_without_our_section_is_built(checkpoints, tmp_path):
    """Float tensors with quant_algo set hold no pre-shuffled bytes, whoever wrote them."""
    ckpt = copy_without_manifest(checkpoints(use_weight_only=True, quantize_at_build=True), tmp_path / "qab",
                                 drop_our_section)
    _, ranks = read_engine(run_build(ckpt, tmp_path / "engine"))
    assert ranks[0][f"{GEMM}.weight"].dtype == torch.int8


def test_group_wise_int4_engine_and_its_quantize_at_build_form(tmp_path):
    """weights_scaling_factor [.., in/64, out] per GEMM, build_config.weight_only recorded; the builder's
    quantization of the float form gives the same bytes as the converter's."""
    save_tiny_model(tmp_path / "hf", GROUPED_SPEC, tokenizer=False)
    flags = dict(dtype="float32", tp_size=2, use_weight_only=True, weight_only_precision="int4", group_size=64)
    convert(ConvertOptions(str(tmp_path / "hf"), str(tmp_path / "plain"), **flags))
    convert(ConvertOptions(str(tmp_path / "hf"), str(tmp_path / "qab"), quantize_at_build=True, **flags))
    config, want = read_engine(run_build(tmp_path / "plain", tmp_path / "e-plain"))
    _, got = read_engine(run_build(tmp_path / "qab", tmp_path / "e-qab"))
    assert config["pretrained_config"]["quantization"] == {"quant_algo": "W4A16_GPTQ", "group_size": 64,
                                                          "has_zero_point": False, "pre_quant_scale": False,
                                                          "kv_cache_quant_algo": None}
    assert config["build_config"]["weight_only"] == {"precision": "int4", "group_size": 64}
    cfg = DbrxConfig.from_checkpoint_dict(config["pretrained_config"])
    for rank, (g, w) in enumerate(zip(got, want)):
        layout = weight_only_layout(float_layout(cfg, Mapping(2, 1, 2, 1), rank, torch.float32), "int4", 64,
                                    engine=True)
        assert {k: (t.dtype, tuple(t.shape)) for k, t in w.items()} == layout
        assert g.keys() == w.keys() and all(torch.equal(g[k], w[k]) for k in w)
    assert want[0]["transformer.layers.0.attention.dense.weights_scaling_factor"].shape == (1, 128)  # H/t = 64
    assert want[0][f"{GEMM}.weights_scaling_factor"].shape == (4, 2, 128)  # [El, H/64, 2*Il] (moe_tp 2)
