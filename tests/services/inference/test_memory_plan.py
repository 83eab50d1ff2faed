"""The memory plan (memory.py) on the CPU, where the budget is given (no device memory to measure):
its numbers are the engine's pool's, a budget that cannot hold one sequence of max_seq_len is
refused with the numbers, a given num_kv_blocks wins over the budget, and the profiling pass's
largest step runs through a runner, the sampler's costliest work on its logits."""

import pytest
from safetensors.torch import load_file

from dbrx_serve.services.inference.engine import Engine
from dbrx_serve.services.inference.engine_dir import load_engine_dir
from dbrx_serve.services.inference.kv_cache import PagedKVCache
from dbrx_serve.services.inference.limits import EngineLimits
from dbrx_serve.services.inference.memory import run_profile_step, size
from dbrx_serve.services.inference.model_runner import ModelRunner
from dbrx_serve.services.inference.plan import largest_step
from dbrx_serve.services.inference.sampler import Sampler
from dbrx_serve.shared.errors import InvalidInput

from .conftest import LIMITS

BLOCKS_PER_SEQ = LIMITS["max_seq_len"] // LIMITS["tokens_per_block"]  # 32


def weight_bytes(engine_dir, rank: int = 0) -> int:
    """The rank file's tensors, counted from the file (not from the loaded model)."""
    return sum(t.nbytes for t in load_file(engine_dir / f"rank{rank}.safetensors").values())


def bytes_per_block(engine_dir) -> int:
    cfg = load_engine_dir(engine_dir).config
    return PagedKVCache.bytes_per_block(cfg.n_layers, LIMITS["tokens_per_block"], cfg.kv_n_heads, cfg.head_dim, 4)


def test_the_plan_is_the_pool_the_engine_has(engine_dir):
    path, per_block = engine_dir("fp32"), bytes_per_block(engine_dir("fp32"))
    budget = weight_bytes(path) + 40 * per_block + per_block // 2
    engine = Engine.from_dir(path, memory_budget_bytes=budget)
    plan, cache = engine.runner.memory, engine.runner.cache
    assert (plan.bytes_per_block, plan.weight_bytes, plan.budget_bytes) == (per_block, weight_bytes(path), budget)
    assert plan.num_blocks == 40 == engine.stats().kv_blocks_total == engine.blocks.num_blocks
    assert cache.k.nbytes + cache.v.nbytes == plan.kv_bytes == 40 * per_block
    assert (plan.num_kv_tokens, plan.max_length_seqs, plan.tokens_at_max_batch) == (320, 1, 0)  # 40 blocks / 64
    text = plan.describe()
    assert "40 blocks of 8 tokens" in text and "= 320 tokens of context" in text and "(--memory_budget_bytes)" in text
    assert f"weights {size(weight_bytes(path))}" in text and "1 sequences of max_seq_len at once" in text


def test_a_budget_that_cannot_hold_one_max_length_sequence_is_refused_with_the_numbers(engine_dir):
    path, per_block = engine_dir("fp32"), bytes_per_block(engine_dir("fp32"))
    budget = weight_bytes(path) + (BLOCKS_PER_SEQ - 1) * per_block
    with pytest.raises(InvalidInput) as refused:
        Engine.from_dir(path, memory_budget_bytes=budget)
    message = str(refused.value)
    for said in ("cannot hold one sequence of max_seq_len 256 tokens on cpu",
                 f"needs {BLOCKS_PER_SEQ} KV blocks ({size(BLOCKS_PER_SEQ * per_block)})",
                 f"budget {size(budget)} (--memory_budget_bytes) leaves {size(31 * per_block)}, 31 blocks",
                 f"after weights {size(weight_bytes(path))}", "raise --memory_budget_bytes, spread"):
        assert said in message, message
    assert Engine.from_dir(path, memory_budget_bytes=budget + per_block).stats().kv_blocks_total == BLOCKS_PER_SEQ


def test_a_given_num_kv_blocks_wins_over_the_budget(engine_dir):
    engine = Engine.from_dir(engine_dir("fp32"), num_kv_blocks=4, memory_budget_bytes=1)
    plan = engine.runner.memory
    assert plan.num_blocks == 4 == engine.stats().kv_blocks_total and plan.budget_bytes is None
    assert "budget none: num_kv_blocks given" in plan.describe()


def test_the_profiling_pass_runs_the_largest_step_and_samples_every_row(engine_dir):
    engine = load_engine_dir(engine_dir("fp32"))
    limits = EngineLimits.from_build_config(engine.build, num_kv_blocks=1)
    runner, step, sampled = ModelRunner(engine, limits, "cpu"), largest_step(limits), []
    assert step.block_tables.shape[1] == 1  # 256 tokens over 64 rows: 4 each, one block
    runner.cache = runner.new_cache(1)  # as memory.profile does
    run_profile_step(runner, step, lambda logits: sampled.append(Sampler().sample_costliest(logits) or logits.shape))
    assert sampled == [(64, engine.config.vocab_size)]  # min(max_batch_size, max_num_tokens) rows


@pytest.mark.parametrize("limits,tokens,rows", [
    (dict(max_batch_size=64, max_num_tokens=256, max_input_len=128), 256, 64),  # prefills
    (dict(max_batch_size=512, max_num_tokens=256, max_input_len=128), 256, 256),  # a decode of max_num_tokens rows
    (dict(max_batch_size=2, max_num_tokens=256, max_input_len=100), 200, 2),  # prompts cap the tokens
])
def test_the_largest_step_has_the_most_tokens_and_sampled_rows_the_limits_allow(limits, tokens, rows):
    step = largest_step(EngineLimits(max_seq_len=256, tokens_per_block=8, **limits))
    assert (step.num_tokens, step.num_seqs, len(step.sample_rows)) == (tokens, rows, rows)
    assert step.seq_lens.max() <= limits["max_input_len"] and step.is_decode == (tokens == rows)
    assert (step.slots == step.positions).all()  # every row writes into the same first blocks


@pytest.mark.parametrize("limit", [dict(gpu_memory_fraction=0), dict(gpu_memory_fraction=1.5),
                                   dict(gpu_memory_fraction=float("nan")), dict(memory_budget_bytes=0)])
def test_a_bad_memory_budget_is_refused(limit):
    with pytest.raises(InvalidInput, match="gpu_memory_fraction must lie in|memory_budget_bytes must be"):
        EngineLimits(**limit)
