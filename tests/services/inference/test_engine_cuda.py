"""The engine on CUDA (skipped without a GPU; run on the lent GPU): greedy tokens
as on the CPU up to float32 near-ties, seeded sampling reproducible, looking ahead
as one step at a time, the same bits with and without programmatic dependent launch, int8 KV,
the KV pool sized by the memory plan (its profiling pass measured, its budget kept) and empty after."""

import pytest
import torch

from dbrx_serve.services.inference.engine import Engine
from dbrx_serve.services.inference.params import SamplingParams
from dbrx_serve.shared.errors import InvalidInput

from .conftest import LIMITS
from .helpers import assert_same_greedy
from .test_engine_greedy import PROMPTS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GREEDY = SamplingParams(max_new_tokens=32, temperature=0)


def test_greedy_on_cuda_matches_the_cpu_engine(engine_dir, fp32_engine, reference_model, banned):
    engine = Engine.from_dir(engine_dir("fp32"), device="cuda", num_kv_blocks=256)
    assert engine.runner.cache.k.is_cuda
    for prompt, result in zip(PROMPTS, engine.generate(PROMPTS, GREEDY)):
        assert_same_greedy(result.output_ids, fp32_engine.generate([prompt], GREEDY)[0].output_ids, prompt,
                           reference_model, banned)
    assert engine.stats().kv_blocks_used == 0


def test_seeded_sampling_on_cuda_is_reproducible(engine_dir):
    engine = Engine.from_dir(engine_dir("fp32"), device="cuda", num_kv_blocks=256)
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=11)
    first = engine.generate([PROMPTS[0]], params)[0].output_ids
    company = engine.generate([PROMPTS[1], PROMPTS[0]], [SamplingParams(max_new_tokens=4, seed=1), params])
    assert company[1].output_ids == first


def test_looking_ahead_on_cuda_gives_what_one_step_at_a_time_gives(engine_dir):
    """The default on CUDA (engine.py's lookahead): each decode step replayed (a CUDA graph) with the ids
    the step before sampled, fed on the device. The same batches as without, so the same bits: greedy,
    seeded sampling and logprobs, int4 and float."""
    from .test_lookahead import PARAMS, PROMPTS as LOOKAHEAD_PROMPTS

    for name in ("fp32", "int4"):
        ahead = Engine.from_dir(engine_dir(name), device="cuda", num_kv_blocks=256)
        one_at_a_time = Engine.from_dir(engine_dir(name), device="cuda", num_kv_blocks=256, lookahead=False)
        assert ahead.lookahead and ahead.runner.graphs is not None
        for got, want in zip(ahead.generate(LOOKAHEAD_PROMPTS, PARAMS),
                             one_at_a_time.generate(LOOKAHEAD_PROMPTS, PARAMS)):
            assert (got.output_ids, got.logprobs, got.text) == (want.output_ids, want.logprobs, want.text), name
        assert ahead.stats().kv_blocks_used == 0


def test_programmatic_dependent_launch_changes_no_bit(engine_dir, monkeypatch):
    """Kernels launched early under PDL (kernels/device.py) wait for the ones before them: an engine with
    it (the default on Hopper) and one without give the same tokens, logprobs and text, eager and in
    CUDA graphs, float and int4 (a kernel reading or writing before its wait could change bits: a race
    shows or not by timing, so this catches what happens to show)."""
    from dbrx_serve.services.inference.kernels import device as kernels_device

    from .test_lookahead import PARAMS, PROMPTS as LOOKAHEAD_PROMPTS

    if torch.cuda.get_device_capability()[0] < 9 or not kernels_device.PDL_ON:
        pytest.skip("PDL needs compute capability 9.0 or newer (and DBRX_PDL unset)")
    assert kernels_device.pdl(torch.empty(1, device="cuda"))["PDL"]
    for name in ("fp32", "int4"):
        with_pdl = Engine.from_dir(engine_dir(name), device="cuda", num_kv_blocks=256)
        want = with_pdl.generate(LOOKAHEAD_PROMPTS, PARAMS)
        monkeypatch.setattr(kernels_device, "PDL_ON", False)
        without = Engine.from_dir(engine_dir(name), device="cuda", num_kv_blocks=256)
        assert not kernels_device.pdl(torch.empty(1, device="cuda"))["PDL"]
        for got, expected in zip(without.generate(LOOKAHEAD_PROMPTS, PARAMS), want):
            assert (got.output_ids, got.logprobs, got.text) == (expected.output_ids, expected.logprobs,
                                                                 expected.text), name
        monkeypatch.setattr(kernels_device, "PDL_ON", True)


def test_int8_kv_and_weight_only_engines_run_on_cuda(engine_dir):
    for name in ("int8kv", "int4"):
        engine = Engine.from_dir(engine_dir(name), device="cuda")
        blocks_per_seq = LIMITS["max_seq_len"] // LIMITS["tokens_per_block"]
        assert engine.stats().kv_blocks_total == LIMITS["max_batch_size"] * blocks_per_seq  # memory allows
        result = engine.generate([PROMPTS[2]], GREEDY)[0]
        assert len(result.output_ids) == 32 and engine.stats().kv_blocks_used == 0


def test_the_memory_plan_measures_the_largest_step_and_the_graph_pools_and_keeps_to_its_budget(engine_dir):
    engine = Engine.from_dir(engine_dir("fp32"), device="cuda", gpu_memory_fraction=0.5)
    plan, cache = engine.runner.memory, engine.runner.cache
    assert plan.measured and plan.activation_bytes > 0 and plan.graph_pool_bytes > 0, plan.describe()
    assert plan.budget_bytes == int(torch.cuda.mem_get_info()[1] * 0.5)
    assert plan.num_blocks == engine.stats().kv_blocks_total and cache.k.nbytes + cache.v.nbytes == plan.kv_bytes
    torch.cuda.reset_peak_memory_stats()
    costly = SamplingParams(max_new_tokens=4, temperature=1.0, top_k=50, top_p=0.9, return_logprobs=True)
    engine.generate([[1] * LIMITS["max_input_len"]] * LIMITS["max_batch_size"], costly)  # the largest prefills
    held = plan.weight_bytes + plan.other_bytes + plan.activation_bytes + plan.graph_pool_bytes + plan.kv_bytes
    assert torch.cuda.max_memory_reserved() <= held, plan.describe()
    with pytest.raises(InvalidInput, match="cannot hold one sequence of max_seq_len 256 tokens on cuda"):
        Engine.from_dir(engine_dir("fp32"), device="cuda", memory_budget_bytes=plan.weight_bytes + plan.other_bytes)
