"""Greedy outputs of an fp32 engine against transformers' generate, one by one and
batched; chunked prefill against whole prefill; temperature 0 against top_k 1."""

import torch

from dbrx_serve.services.inference.engine import Engine
from dbrx_serve.services.inference.params import SamplingParams
from dbrx_serve.services.inference.stop import FinishReason
from dbrx_serve.shared.testing import TinySpec, make_hf_model

from .helpers import assert_same_greedy

PROMPTS = [[10, 20, 30, 40], [300, 5, 7], list(range(1, 12)), [100257, 65, 66, 67, 68, 69, 70, 71, 72, 73] * 3]
GREEDY = SamplingParams(max_new_tokens=32, temperature=0)


def transformers_greedy(hf, prompt: list[int], n: int, banned: torch.Tensor) -> list[int]:
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                      suppress_tokens=banned.nonzero()[:, 0].tolist())
    return out[0, len(prompt):].tolist()


def test_fp32_engine_equals_transformers_generate(fp32_engine, reference_model, banned):
    hf = make_hf_model(TinySpec())
    want = [transformers_greedy(hf, p, 32, banned) for p in PROMPTS]
    params = SamplingParams(max_new_tokens=32, temperature=0, end_id=(100256,))  # unassigned: never sampled, so no stop
    alone = [fp32_engine.generate([p], params)[0] for p in PROMPTS]
    batched = fp32_engine.generate(PROMPTS, params)
    for prompt, w, a, b in zip(PROMPTS, want, alone, batched):
        assert len(a.output_ids) == 32 and a.finish_reason is FinishReason.LENGTH
        assert list(a.output_ids) == w  # one at a time: the same shapes as transformers, identical
        assert_same_greedy(b.output_ids, w, prompt, reference_model, banned)
    assert fp32_engine.stats().kv_blocks_used == 0


def test_chunked_prefill_equals_whole_prefill(engine_dir, reference_model, banned):
    prompts = [list(range(100, 100 + n)) for n in (37, 64, 90)]
    whole = Engine.from_dir(engine_dir("fp32"))
    chunked = Engine.from_dir(engine_dir("fp32"), max_num_tokens=8)
    for prompt in prompts:
        w = whole.generate([prompt], GREEDY)[0].output_ids
        c = chunked.generate([prompt], GREEDY)[0].output_ids
        assert_same_greedy(c, w, prompt, reference_model, banned)
    together = chunked.generate(prompts, GREEDY)
    for prompt, r in zip(prompts, together):
        assert_same_greedy(r.output_ids, whole.generate([prompt], GREEDY)[0].output_ids, prompt,
                           reference_model, banned)


def test_chunked_prefill_logits_stay_within_float32_noise(engine_dir):
    """The same prompt's last-token logits, whole vs 8 tokens a step: measured 1.9e-4 (fp32)."""
    prompt = list(range(200, 290))
    logits = []
    for budget in (256, 8):
        engine = Engine.from_dir(engine_dir("fp32"), max_num_tokens=budget)
        seen = capture_logits(engine)
        engine.generate([prompt], SamplingParams(max_new_tokens=1, temperature=0))
        logits.append(seen[0])
    assert float((logits[0] - logits[1]).abs().max()) < 1e-3


def capture_logits(engine: Engine) -> list[torch.Tensor]:
    """Record the sampled rows' raw logits of every step launched (what the engine's sampler draws from)."""
    seen, draw = [], engine.sampler.draw_async

    def recording(logits, rows):
        seen.extend(logits.clone())
        return draw(logits, rows)
    engine.sampler.draw_async = recording
    return seen


def test_temperature_zero_equals_top_k_one(fp32_engine):
    prompt = PROMPTS[2]
    by_temperature = fp32_engine.generate([prompt], SamplingParams(max_new_tokens=16, temperature=0))[0]
    by_top_k = fp32_engine.generate([prompt], SamplingParams(max_new_tokens=16, temperature=0.7, top_k=1,
                                                             seed=3))[0]
    assert by_temperature.output_ids == by_top_k.output_ids


def test_text_prompts_and_text_outputs(fp32_engine):
    result = fp32_engine.generate(["The quick brown fox"], SamplingParams(max_new_tokens=8, temperature=0))[0]
    tokenizer = fp32_engine.tokenizer
    assert list(result.prompt_ids) == tokenizer.encode_text("The quick brown fox")
    assert result.text == tokenizer.decode(list(result.output_ids))
