"""Weight-only int8 / int4 engines against the reference forward pass on the same
dequantized weights, and the int8 KV cache against float32 KV, each within a
logit bound measured here (the bounds and the numbers seen are in the names)."""

import pytest
import torch

from dbrx_serve.services.inference.engine import Engine
from dbrx_serve.services.inference.params import SamplingParams
from dbrx_serve.shared.config import DbrxConfig
from dbrx_serve.shared.model import DbrxModel, causal_attention
from dbrx_serve.shared.reference import greedy_generate
from dbrx_serve.shared.weight_only import dequantized_engine_state

from .conftest import WIDE_ENGINES
from .helpers import assert_same_greedy
from .test_engine_greedy import PROMPTS, capture_logits

# Max |logit diff| against a teacher-forced reference, 4 prompts x 24 steps, measured on the tiny model:
# the fp32 engine itself is 1.3e-3 off its reference (float32 sums in another order: incremental decode
# vs one whole forward; this random tiny model amplifies rounding), so that is the floor.
WEIGHT_ONLY_BOUND = 5e-3  # measured 1.5e-3 (int8), 1.0e-3 (int4): the same dequantized weights
# The wide tiny model (conftest.WIDE_SPEC) has larger logits and amplifies float32 rounding more: its fp32
# engine is 0.017 off its own reference, int4 per channel 0.031, int4 g128 0.038 (measured).
WIDE_BOUND = 6e-2
QUANT_ALGO = {"int8": "W8A16", "int4": "W4A16", "int4g128": "W4A16_GPTQ"}
INT8_KV_EXACT_BOUND = 2e-2  # against the reference rounding K/V the same way: measured 4.5e-3 (a rounding
# at a .5 boundary flips by one step where float32 noise differs)
INT8_KV_BOUND = 1.0  # against float32 KV: measured 0.41 on logits up to 3.2 (the cost of per-layer int8 KV here)


def dequantized_reference(engine: Engine) -> DbrxModel:
    """A float DbrxModel holding the engine's int weights (as its modules hold them) times their scales."""
    model = DbrxModel(DbrxConfig.from_checkpoint_dict(engine.engine_dir.pretrained))
    state = dequantized_engine_state(engine.runner.model, torch.float32)
    model.load_state_dict({name: state[name].cpu() for name in model.state_dict()}, strict=True)
    return model.eval()


def fake_int8_kv(scales):
    """The reference's attention with K and V rounded as an int8 cache stores them."""
    def rounded(x, scale):
        return torch.round(x / scale).clamp(-127, 127) * scale

    def attend(layer, q, k, v, positions):
        return causal_attention(layer, q, rounded(k, scales.k[layer]), rounded(v, scales.v[layer]), positions)
    return attend


@torch.inference_mode()
def teacher_forced_logits(model, prompt: list[int], outputs: list[int], banned, attend=causal_attention):
    """The reference's logits at each step the engine sampled: [len(outputs), V]."""
    ids = prompt + outputs[:-1]
    logits = model(torch.tensor([ids]), torch.arange(len(ids))[None], attend)[0, len(prompt) - 1:]
    return logits.masked_fill(banned[:logits.shape[-1]], float("-inf"))


def max_logit_diff(engine: Engine, reference, prompts, banned, steps: int, attend=causal_attention) -> float:
    seen = capture_logits(engine)
    worst = 0.0
    for prompt in prompts:
        seen.clear()
        out = list(engine.generate([prompt], SamplingParams(max_new_tokens=steps, temperature=0))[0].output_ids)
        got = torch.stack(seen[:len(out)]).cpu().masked_fill(banned, float("-inf"))  # not a step launched ahead
        diff = (got - teacher_forced_logits(reference, prompt, out, banned, attend)).nan_to_num(0.0)
        worst = max(worst, float(diff.abs().max()))
    return worst


@pytest.mark.parametrize("name", list(QUANT_ALGO))
def test_weight_only_engine_equals_its_dequantized_reference(name, engine_dir, banned):
    """int4 g128 on the wide tiny model (conftest.WIDE_SPEC): group scales [in/128, out] in every GEMM."""
    engine = Engine.from_dir(engine_dir(name))
    assert engine.engine_dir.quant_algo == QUANT_ALGO[name]
    assert engine.runner.model.transformer.layers[0].attention.qkv.weight.dtype == torch.int8
    reference = dequantized_reference(engine)
    for prompt in PROMPTS:
        got = engine.generate([prompt], SamplingParams(max_new_tokens=32, temperature=0))[0].output_ids
        want = greedy_generate(reference, prompt, 32, banned=banned)
        assert_same_greedy(got, want, prompt, reference, banned)
    assert max_logit_diff(engine, reference, PROMPTS, banned, 16) < (WIDE_BOUND if name in WIDE_ENGINES
                                                                     else WEIGHT_ONLY_BOUND)


def test_int8_kv_cache_stays_within_a_logit_bound_of_float_kv(engine_dir, reference_model, banned):
    engine = Engine.from_dir(engine_dir("int8kv"))
    assert engine.runner.cache.k.dtype == torch.int8 and engine.engine_dir.kv_scales is not None
    assert max_logit_diff(engine, reference_model, PROMPTS, banned, 24) < INT8_KV_BOUND
    exact = max_logit_diff(engine, reference_model, PROMPTS, banned, 24, fake_int8_kv(engine.engine_dir.kv_scales))
    assert exact < INT8_KV_EXACT_BOUND


def test_a_bfloat16_engine_with_int8_kv_runs(engine_dir):
    engine = Engine.from_dir(engine_dir("bf16int8kv"))
    assert engine.runner.model.lm_head.weight.dtype == torch.bfloat16 and engine.runner.cache.k.dtype == torch.int8
    results = engine.generate(PROMPTS, SamplingParams(max_new_tokens=16, temperature=0))
    assert [len(r.output_ids) for r in results] == [16] * len(PROMPTS)
    assert engine.stats().kv_blocks_used == 0
