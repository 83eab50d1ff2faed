"""Continuous batching on a real engine: requests joining at random steps get the
tokens they get alone; the KV pool ends empty; aborts free blocks at once."""

import random

import pytest

from dbrx_serve.services.inference.engine import Engine
from dbrx_serve.services.inference.params import SamplingParams
from dbrx_serve.services.inference.stop import FinishReason
from dbrx_serve.shared.errors import CapacityExhausted

from .helpers import assert_same_greedy


def mixed_requests(count: int, seed: int = 0) -> list[tuple[list[int], SamplingParams]]:
    rng = random.Random(seed)
    return [([rng.randrange(0, 500) for _ in range(rng.randint(1, 60))],
             SamplingParams(max_new_tokens=rng.randint(1, 12), temperature=0, end_id=(100256,)))
            for _ in range(count)]


def run_joining_at_random_steps(engine: Engine, requests, seed: int = 1) -> dict[str, list[int]]:
    rng, pending, outputs = random.Random(seed), list(enumerate(requests)), {}
    while pending or engine.has_unfinished:
        for _ in range(min(rng.randint(0, 4), len(pending))):
            i, (prompt, params) = pending.pop(0)
            outputs[engine.add_request(prompt, params, request_id=f"r{i}")] = []
        for out in engine.step():
            outputs[out.request_id].extend(out.token_ids)
    return outputs


def test_64_requests_joining_at_random_steps_match_each_run_alone(engine_dir, fp32_engine, reference_model, banned):
    requests = mixed_requests(64)
    engine = Engine.from_dir(engine_dir("fp32"), max_num_tokens=64, num_kv_blocks=40)  # chunks, and a wait
    outputs = run_joining_at_random_steps(engine, requests)
    identical = 0
    for i, (prompt, params) in enumerate(requests):
        alone = fp32_engine.generate([prompt], params)[0].output_ids
        assert len(outputs[f"r{i}"]) == len(alone) == params.max_new_tokens
        identical += assert_same_greedy(outputs[f"r{i}"], alone, prompt, reference_model, banned)
    assert identical >= 60  # the rest differ only at a float32 near-tie
    stats = engine.stats()
    assert (stats.running, stats.waiting, stats.kv_blocks_used, stats.kv_blocks_free) == (0, 0, 0, 40)


def test_aborted_requests_free_their_blocks_at_once(engine_dir):
    engine = Engine.from_dir(engine_dir("fp32"), max_batch_size=2)
    params = SamplingParams(max_new_tokens=20, temperature=0)
    for name, length in (("a", 30), ("b", 9), ("c", 5)):
        engine.add_request(list(range(1, length + 1)), params, request_id=name)
    for _ in range(3):
        engine.step()
    before = engine.stats()
    assert (before.running, before.waiting) == (2, 1)
    a_blocks = len(engine.sequences["a"].block_table)
    assert a_blocks == 4  # the prompt (30) and 2 sampled tokens are cached: 32 tokens, 8 a block
    assert engine.abort("a")
    after = engine.stats()
    assert after.kv_blocks_used == before.kv_blocks_used - a_blocks and after.running == 1
    assert engine.abort("c") and engine.stats().waiting == 0
    assert not engine.abort("a") and not engine.abort("unknown")
    while engine.has_unfinished:
        engine.step()
    assert engine.stats().kv_blocks_used == 0


def test_a_full_waiting_queue_is_a_capacity_error(engine_dir):
    engine = Engine.from_dir(engine_dir("fp32"), max_queue_size=2)
    for _ in range(2):
        engine.add_request([1, 2, 3], SamplingParams(max_new_tokens=2))
    with pytest.raises(CapacityExhausted, match="queue is full"):
        engine.add_request([1, 2, 3], SamplingParams(max_new_tokens=2))


def test_step_outputs_carry_the_finish_reason_once(fp32_engine):
    fp32_engine.add_request([5, 6, 7], SamplingParams(max_new_tokens=3, temperature=0), request_id="x")
    outputs = []
    while fp32_engine.has_unfinished:
        outputs += fp32_engine.step()
    assert [o.finish_reason for o in outputs] == [None, None, FinishReason.LENGTH]
    assert all(len(o.token_ids) == 1 for o in outputs)
