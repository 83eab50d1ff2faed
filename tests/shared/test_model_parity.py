"""Our forward pass against transformers' DbrxForCausalLM (the oracle), float32."""

import pytest
import torch
from transformers import DynamicCache

from dbrx_serve.shared.model import DenseKVCache
from dbrx_serve.shared.reference import greedy_generate, load_hf_model
from dbrx_serve.shared.testing import TinySpec, save_tiny_model

REL_TOL = 1e-4
CONFIGS = {
    "gqa-clamping-top2": TinySpec(kv_n_heads=2, clip_qkv=0.3, moe_top_k=2, vocab_size=512, seed=1),
    "mqa-top1-no-normalize": TinySpec(kv_n_heads=1, clip_qkv=4.0, moe_top_k=1,
                                      moe_normalize_expert_weights=None, vocab_size=512, seed=2),
    "top4-of-8": TinySpec(kv_n_heads=4, clip_qkv=0.5, moe_num_experts=8, moe_top_k=4, vocab_size=512, seed=3),
    "odd-d96-p2-norm": TinySpec(d_model=96, n_heads=6, kv_n_heads=3, clip_qkv=0.4, moe_top_k=2,
                                moe_normalize_expert_weights=2.0, ffn_hidden_size=40, n_layers=3,
                                vocab_size=700, seed=4),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    """(transformers model, our model loaded from its save_pretrained output, spec)."""
    spec = CONFIGS[request.param]
    path = tmp_path_factory.mktemp(request.param)
    hf = save_tiny_model(path, spec, tokenizer=False, max_shard_size="40KB")
    return hf, load_hf_model(path), spec


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got - ref).abs().max() / ref.abs().max()).item()


def prompt(spec: TinySpec, length: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, spec.vocab_size, (1, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_full_prompt_logits_match(pair):
    hf, ours, spec = pair
    ids = prompt(spec)
    ref = hf(ids).logits
    got = ours(ids, torch.arange(ids.shape[1])[None])
    assert relative_error(got, ref) <= REL_TOL


@torch.no_grad()
def test_step_by_step_with_kv_cache_matches(pair):
    """Prefill 8 tokens, then one per step, against transformers doing the same with its cache.

    (transformers' own step-by-step logits differ from its full-prompt ones by ~3e-4
    in float32 on these models, so each side is compared with its like.)"""
    hf, ours, spec = pair
    ids, split = prompt(spec, 20, seed=1), 8
    hf_cache = DynamicCache(config=hf.config)
    ref = [hf(ids[:, :split], past_key_values=hf_cache, use_cache=True).logits[0]]
    cache = DenseKVCache(ours, 1, ids.shape[1])
    got = [ours(ids[:, :split], torch.arange(split)[None], cache.attend)[0]]
    for t in range(split, ids.shape[1]):
        ref.append(hf(ids[:, t:t + 1], past_key_values=hf_cache, use_cache=True).logits[0])
        got.append(ours(ids[:, t:t + 1], torch.tensor([[t]]), cache.attend)[0])
    assert relative_error(torch.cat(got), torch.cat(ref)) <= REL_TOL


@torch.no_grad()
def test_32_greedy_tokens_identical(pair):
    hf, ours, spec = pair
    for seed in range(2):
        ids = prompt(spec, 10, seed=seed)
        ref = hf.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)[0, ids.shape[1]:]
        assert greedy_generate(ours, ids[0].tolist(), 32) == ref.tolist()


def test_the_clamp_is_exercised():
    """The clamping config really clamps (else the parity test would not cover clip_qkv)."""
    spec = CONFIGS["gqa-clamping-top2"]
    from dbrx_serve.shared.testing import make_hf_model
    hf = make_hf_model(spec)
    attn = hf.transformer.blocks[0].norm_attn_norm
    with torch.no_grad():
        qkv = attn.attn.Wqkv(attn.norm_1(hf.transformer.wte(prompt(spec))))
    assert (qkv.abs() > spec.clip_qkv).float().mean() > 0.1


@torch.no_grad()
def test_decode_step_batches_rows_at_different_positions(pair):
    """Two prompts of different lengths, prefilled apart, then decoded in one batched step."""
    hf, ours, spec = pair
    a, b = prompt(spec, 9, seed=5), prompt(spec, 5, seed=6)
    cache = DenseKVCache(ours, 2, 16)
    next_a = ours(a, torch.arange(9)[None], _row(cache, 0))[0, -1].argmax()
    next_b = ours(b, torch.arange(5)[None], _row(cache, 1))[0, -1].argmax()
    step = ours(torch.stack([next_a, next_b])[:, None], torch.tensor([[9], [5]]), cache.attend)
    ref_a = hf(torch.cat([a[0], next_a[None]])[None]).logits[0, -1]
    ref_b = hf(torch.cat([b[0], next_b[None]])[None]).logits[0, -1]
    assert relative_error(step[0, -1], ref_a) <= REL_TOL
    assert relative_error(step[1, -1], ref_b) <= REL_TOL


def _row(cache: DenseKVCache, row: int):
    """`attend` on one row of a batched cache (views of its tensors)."""
    view = DenseKVCache.__new__(DenseKVCache)
    view.k, view.v = cache.k[:, row:row + 1], cache.v[:, row:row + 1]
    return view.attend
