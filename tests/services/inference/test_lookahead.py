"""The engine looking ahead (engine.py: the next decode step launched, fed the
sampled tokens on the device, before they are read). The default on CUDA only;
forced on here, on the CPU, it must give what stepping one at a time gives."""

from dataclasses import replace

from dbrx_serve.services.inference.engine import Engine
from dbrx_serve.services.inference.params import SamplingParams
from dbrx_serve.services.inference.sequence import PENDING
from dbrx_serve.services.inference.stop import FinishReason

from .helpers import assert_same_greedy
from .test_continuous_batching import mixed_requests, run_joining_at_random_steps

PROMPTS = ["What is AGI?", "Hello there, how are you doing today", "1 2 3", "The quick brown fox"]
PARAMS = [SamplingParams(max_new_tokens=12, temperature=0, end_id=()),
          SamplingParams(max_new_tokens=12, temperature=0, end_id=(), return_logprobs=True),
          SamplingParams(max_new_tokens=12, temperature=0.8, top_k=20, seed=1, end_id=()),
          SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=2, end_id=(), return_logprobs=True)]


def test_looking_ahead_gives_the_same_tokens_logprobs_and_text(engine_dir, fp32_engine):
    """Greedy and seeded sampling, logprobs: the same batch each step as without (all run to
    max_new_tokens), so the same bits; a step was launched ahead at every step but the last."""
    engine = Engine.from_dir(engine_dir("fp32"), lookahead=True)
    assert engine.lookahead and not fp32_engine.lookahead
    ids = [engine.add_request(p, q) for p, q in zip(PROMPTS, PARAMS)]
    seqs = [engine.sequences[i] for i in ids]
    ahead = []
    while engine.has_unfinished:
        engine.step()
        ahead.append(engine.ahead is not None)
        assert PENDING not in [t for s in seqs for t in s.output_ids]  # stand-ins never outlive a step
    assert ahead == [True] * 11 + [False]  # 12 tokens: the prefill and 10 decodes launched one ahead
    alone = fp32_engine.generate(PROMPTS, PARAMS)
    for seq, want in zip(seqs, alone):
        assert (seq.output_ids, seq.logprobs, seq.text, seq.finish_reason) == (
            list(want.output_ids), list(want.logprobs), want.text, FinishReason.LENGTH)
    stats = engine.stats()
    assert (stats.running, stats.kv_blocks_used) == (0, 0)


def test_a_sequence_that_stops_early_drops_the_token_computed_ahead(engine_dir, fp32_engine, reference_model, banned):
    """A stop string ends one request mid-batch: its step already launched ahead is computed and
    dropped; the others go on as they would (the same tokens, up to a float32 near-tie)."""
    plain = fp32_engine.generate(PROMPTS[:2], PARAMS[:2])
    stop_text = plain[0].text[len(plain[0].text) // 2:][:3]  # text from the middle of its own output
    params = [replace(PARAMS[0], stop=(stop_text,)), PARAMS[1]]
    want = fp32_engine.generate(PROMPTS[:2], params)
    engine = Engine.from_dir(engine_dir("fp32"), lookahead=True)
    got = engine.generate(PROMPTS[:2], params)
    assert got[0].finish_reason is FinishReason.STOP and got[0].output_ids == want[0].output_ids
    assert got[0].text == want[0].text
    assert_same_greedy(got[1].output_ids, want[1].output_ids, fp32_engine.prompts.ids(PROMPTS[1]), reference_model,
                       banned)
    assert engine.stats().kv_blocks_used == 0


def test_an_abort_while_a_step_runs_ahead(engine_dir, fp32_engine, reference_model, banned):
    """Aborted between steps, with a step of it launched ahead: it gets nothing more, its blocks are
    free at once; the other requests finish as alone."""
    engine = Engine.from_dir(engine_dir("fp32"), lookahead=True)
    params = SamplingParams(max_new_tokens=10, temperature=0, end_id=())
    prompts = [list(range(1, 31)), list(range(40, 49)), list(range(60, 65))]
    outputs = {name: [] for name in "abc"}
    for prompt, name in zip(prompts, "abc"):
        engine.add_request(prompt, params, request_id=name)

    def step():
        for out in engine.step():
            outputs[out.request_id].extend(out.token_ids)
    for _ in range(3):
        step()
    assert engine.ahead is not None and engine.sequences["a"] in engine.ahead.seqs
    used = engine.stats().kv_blocks_used
    assert engine.abort("a") and engine.stats().kv_blocks_used < used
    while engine.has_unfinished:
        step()
    assert len(outputs["a"]) == 3  # none after the abort
    for name, prompt in zip("bc", prompts[1:]):
        alone = fp32_engine.generate([prompt], params)[0].output_ids
        assert len(outputs[name]) == 10
        assert_same_greedy(outputs[name], alone, prompt, reference_model, banned)
    assert engine.stats().kv_blocks_used == 0


def test_requests_joining_at_random_steps_while_looking_ahead(engine_dir, fp32_engine, reference_model, banned):
    """Continuous batching (test_continuous_batching.py's run) with end ids, chunked prefills and a
    waiting queue: a request joins one step later than without, and gets the tokens it gets alone."""
    requests = mixed_requests(32, seed=3)
    engine = Engine.from_dir(engine_dir("fp32"), max_num_tokens=64, num_kv_blocks=40, lookahead=True)
    outputs = run_joining_at_random_steps(engine, requests, seed=4)
    identical = 0
    for i, (prompt, params) in enumerate(requests):
        alone = fp32_engine.generate([prompt], params)[0].output_ids
        assert len(outputs[f"r{i}"]) == len(alone)
        identical += assert_same_greedy(outputs[f"r{i}"], alone, prompt, reference_model, banned)
    assert identical >= 30
    stats = engine.stats()
    assert (stats.running, stats.waiting, stats.kv_blocks_used, stats.kv_blocks_free) == (0, 0, 0, 40)
