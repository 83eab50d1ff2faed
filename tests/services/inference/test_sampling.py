"""Per-request sampling: seeds reproducible and independent of batch company,
unassigned ids never sampled, top-k / top-p filters, logprobs."""

import math
from dataclasses import replace

import torch

from dbrx_serve.services.inference.params import SamplingParams
from dbrx_serve.services.inference.sampler import Sampler, SamplingRows, top_k_filter, top_p_filter, uniforms

PROMPT = [10, 20, 30, 40]


def sampled(seed: int, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=24, temperature=1.0, seed=seed, **kw)


def test_the_same_seed_gives_the_same_tokens_whatever_else_is_in_the_batch(fp32_engine):
    alone = fp32_engine.generate([PROMPT], sampled(7))[0].output_ids
    assert fp32_engine.generate([PROMPT], sampled(7))[0].output_ids == alone
    company = [[1, 2, 3], PROMPT, list(range(50, 90)), PROMPT]
    params = [sampled(1), sampled(7), SamplingParams(max_new_tokens=5, temperature=0), sampled(8)]
    results = fp32_engine.generate(company, params)
    assert results[1].output_ids == alone
    assert results[3].output_ids != alone  # another seed, another draw
    assert fp32_engine.stats().kv_blocks_used == 0


def test_unassigned_ids_are_never_sampled(fp32_engine):
    unassigned = torch.tensor(fp32_engine.tokenizer.unassigned_mask(fp32_engine.vocab_size))
    results = fp32_engine.generate([PROMPT] * 4, [SamplingParams(max_new_tokens=32, temperature=50.0, seed=s)
                                                  for s in range(4)])
    ids = torch.tensor([t for r in results for t in r.output_ids])
    assert len(ids) > 64 and not unassigned[ids].any()
    assert len(set(ids.tolist())) > 20  # a hot temperature spreads over the assigned ids


def test_the_mask_applies_before_anything_else():
    logits = torch.tensor([[0.0, 9.0, 1.0, 2.0]])
    sampler = Sampler(torch.tensor([False, True, False, False]))
    greedy = SamplingParams(temperature=0, return_logprobs=True)
    tokens, logprobs = sampler.sample(logits, SamplingRows((greedy,), (0,), (0,)))
    assert tokens == [3]
    assert math.isclose(logprobs[0], float(torch.log_softmax(torch.tensor([0.0, 1.0, 2.0]), 0)[2]), rel_tol=1e-6)
    for seed in range(8):  # a hot temperature with top_k 2 draws 3 or 2, never the banned 1
        hot = SamplingParams(temperature=100.0, top_k=2)
        assert sampler.sample(logits, SamplingRows((hot,), (seed,), (0,)))[0][0] in (2, 3)


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.isinf(top_k_filter(logits, 2)).tolist() == [False, False, True, True]
    assert torch.isinf(top_p_filter(logits, 0.8)).tolist() == [False, False, True, True]
    assert torch.isinf(top_p_filter(logits, 0.81)).tolist() == [False, False, False, True]
    assert torch.isinf(top_p_filter(logits, 0.1)).tolist() == [False, True, True, True]
    assert not torch.isinf(top_p_filter(logits, 1.0)).any()


def test_sampled_tokens_stay_in_top_k(fp32_engine):
    """With top_k 2, twelve seeds draw at most two distinct first tokens."""
    params = SamplingParams(max_new_tokens=1, temperature=1.0, top_k=2, return_logprobs=True)
    firsts = {fp32_engine.generate([PROMPT], replace(params, seed=s))[0].output_ids[0] for s in range(12)}
    assert 1 <= len(firsts) <= 2


def test_logprobs_are_returned_per_token(fp32_engine):
    result = fp32_engine.generate([PROMPT], SamplingParams(max_new_tokens=6, temperature=0,
                                                           return_logprobs=True))[0]
    assert len(result.logprobs) == 6 and all(lp <= 0 for lp in result.logprobs)
    plain = fp32_engine.generate([PROMPT], SamplingParams(max_new_tokens=6, temperature=0))[0]
    assert plain.logprobs == () and plain.output_ids == result.output_ids


def test_draws_follow_the_distribution_and_depend_on_seed_and_step_alone():
    """Gumbel-max over the hashed uniforms: frequencies match softmax(logits / T); a row's draw is the
    same alone or in a batch, and changes with the seed or the step."""
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    params = SamplingParams(temperature=1.0)
    sampler = Sampler()
    n = 4000
    rows = SamplingRows((params,) * n, tuple(range(n)), (5,) * n)
    tokens = torch.tensor(sampler.sample(logits.expand(n, 4), rows)[0])
    freq = torch.bincount(tokens, minlength=4).float() / n
    assert (freq - torch.tensor([0.1, 0.2, 0.3, 0.4])).abs().max() < 0.03
    alone = [sampler.sample(logits[None], SamplingRows((params,), (s,), (5,)))[0][0] for s in range(20)]
    assert alone == tokens[:20].tolist()
    u = uniforms(torch.tensor([7, 7, 8]), torch.tensor([0, 1, 0]), 1000)
    assert 0 < u.min() and u.max() < 1 and not torch.equal(u[0], u[1]) and not torch.equal(u[0], u[2])
    assert torch.equal(u[0], uniforms(torch.tensor([7]), torch.tensor([0]), 1000)[0])


def test_seeds_up_to_the_largest_uint64_draw_and_differ():
    """The proto's seed is a uint64: seeds from 2^63 up must draw (not overflow the step, which would
    fail every request in it) and differ from the seeds sharing their low 63 bits."""
    sampler, params = Sampler(), SamplingParams(temperature=1.0)
    logits = torch.zeros(2, 50)
    for seed in (2**63, 2**64 - 1):
        drawn = sampler.sample(logits, SamplingRows((params, params), (seed, seed - 2**63), (0, 0)))[0]
        assert all(0 <= t < 50 for t in drawn)
    u = uniforms(torch.tensor([-1, 2**63 - 1]), torch.tensor([0, 0]), 1000)  # 2^64-1 and 2^63-1 as int64
    assert not torch.equal(u[0], u[1]) and 0 < u.min() and u.max() < 1
