"""--int8_kv_cache: the scales equal the spec's definitions, computed here by an
independent hook on transformers' DbrxForCausalLM over the same calibration text."""

import json

import pytest
import torch
from transformers import DbrxForCausalLM

from dbrx_serve.services.converter.prompts import BUILTIN_ARTICLES
from dbrx_serve.services.tokenizer.tokenizer import load_tokenizer
from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.mapping import Mapping

from .conftest import leftovers, read_checkpoint, run_convert

REL_TOL = 1e-4


def calibration_ids(model_dir, articles: list[str]) -> list[list[int]]:
    """The spec's recipe: article + ' TL;DR: ', stripped, " n't" -> "n't", first 512 tokens."""
    tokenizer = load_tokenizer(model_dir)
    return [tokenizer.encode_text((a + " TL;DR: ").strip().replace(" n't", "n't"))[:512] for a in articles]


@torch.no_grad()
def transformers_maxima(model_dir, ids: list[list[int]]) -> dict[str, list[float]]:
    """max |Wqkv output| (a forward hook: before the clamp), and max |K|, |V| as transformers'
    own KV cache stores them (K after clamp and RoPE, V after clamp), per layer."""
    hf = DbrxForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    layers = len(hf.transformer.blocks)
    found = {"qkv": [0.0] * layers, "k": [0.0] * layers, "v": [0.0] * layers}

    def hook(i):
        return lambda _m, _x, out: found["qkv"].__setitem__(i, max(found["qkv"][i], out.abs().max().item()))
    handles = [b.norm_attn_norm.attn.Wqkv.register_forward_hook(hook(i)) for i, b in enumerate(hf.transformer.blocks)]
    for sample in ids:
        cache = hf(torch.tensor([sample]), use_cache=True).past_key_values
        for i in range(layers):
            found["k"][i] = max(found["k"][i], cache.layers[i].keys.abs().max().item())
            found["v"][i] = max(found["v"][i], cache.layers[i].values.abs().max().item())
    for handle in handles:
        handle.remove()
    return found


def assert_close(got: float, want: float) -> None:
    assert abs(got - want) <= REL_TOL * abs(want), (got, want)


@pytest.mark.parametrize("dataset", [None, "cnn"])
def test_kv_scales_equal_an_independent_transformers_hook(dataset, tiny_model_dir, shared_dir, tmp_path):
    flags = dict(int8_kv_cache=True, tp_size=2, pp_size=2)
    if dataset:
        flags.update(calib_dataset=str(shared_dir / "data" / "cnn_dailymail_sample.jsonl"), calib_size=2)
        articles = [json.loads(line)["article"] for line in open(flags["calib_dataset"]).readlines()[:2]]
    else:
        articles = list(BUILTIN_ARTICLES)
    ckpt = run_convert(tiny_model_dir, tmp_path / "kv", **flags)
    ids = calibration_ids(tiny_model_dir, articles)
    assert dataset is None or max(map(len, ids)) == 512  # CNN articles are truncated
    want = transformers_maxima(tiny_model_dir, ids)
    scales = json.loads((ckpt / "kv_cache_scales.json").read_text())
    assert scales["calibration"]["samples"] == len(articles) and scales["calibration"]["max_seq_len"] == 512
    for layer, entry in enumerate(scales["layers"]):
        assert_close(entry["k"], want["k"][layer] / 127)
        assert_close(entry["v"], want["v"][layer] / 127)
    config, ranks = read_checkpoint(ckpt)
    assert config["quantization"]["kv_cache_quant_algo"] == "INT8"
    mapping = Mapping(tp_size=2, pp_size=2, moe_tp_size=2)
    for rank, tensors in enumerate(ranks):
        for local, layer in enumerate(mapping.layers(rank, len(scales["layers"]))):
            factor = tensors[f"transformer.layers.{local}.attention.kv_cache_scaling_factor"]
            assert factor.dtype == torch.float32 and factor.shape == (1,)
            assert_close(factor.item(), want["qkv"][layer] / 127)


def test_k_scale_differs_from_the_pre_clamp_scalar(tiny_model_dir, tmp_path):
    """The clamp at clip_qkv bounds K and V, not the pre-clamp scalar (the two definitions differ)."""
    ckpt = run_convert(tiny_model_dir, tmp_path / "kv", int8_kv_cache=True, calib_size=2)
    scales = json.loads((ckpt / "kv_cache_scales.json").read_text())
    _, ranks = read_checkpoint(ckpt)
    clip = json.loads((ckpt / "config.json").read_text())["clip_qkv"]
    for layer, entry in enumerate(scales["layers"]):
        assert entry["v"] <= clip / 127 * (1 + 1e-6)
        assert ranks[0][f"transformer.layers.{layer}.attention.kv_cache_scaling_factor"].item() > entry["v"]


def test_int8_kv_cache_refused_without_tokenizer_files(shard_model, tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # no fallback to tiktoken's cache either
    with pytest.raises(InvalidInput, match="--int8_kv_cache tokenizes calibration text.*has none"):
        run_convert(shard_model[0], tmp_path / "kv", int8_kv_cache=True)
    assert leftovers(tmp_path / "kv") == []


def test_calibration_dataset_errors(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"article": "fine"}\n{"text": "no article"}\n')
    with pytest.raises(InvalidInput, match="bad.jsonl line 2: expected a JSON object with an 'article' string"):
        run_convert(tiny_model_dir, tmp_path / "kv", int8_kv_cache=True, calib_dataset=str(bad), calib_size=2)
    with pytest.raises(InvalidInput, match="has 2 articles; calib_size asks for 3"):
        bad.write_text('{"article": "one"}\n{"article": "two"}\n')
        run_convert(tiny_model_dir, tmp_path / "kv", int8_kv_cache=True, calib_dataset=str(bad), calib_size=3)
    assert leftovers(tmp_path / "kv") == []
