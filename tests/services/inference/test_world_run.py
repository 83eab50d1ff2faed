"""`dbrx run --engine_dir` on multi-rank engines, as run.py is run: starting its own MPI world, or
under `mpiexec -n WORLD`; the greedy ids of `--output_csv` are the one-rank engine's and
transformers', and no process is left behind. A world whose size does not match the engine is
refused, naming both numbers, and every rank exits. Every rank takes the fewest KV blocks any rank's
memory budget leaves."""

import pytest
import torch

from dbrx_serve.services.inference.engine_dir import load_engine_dir
from dbrx_serve.services.inference.kv_cache import PagedKVCache
from dbrx_serve.shared.model import LocalShape

from .conftest import LIMITS
from .multirank import (MAX_NEW, NEVER_SAMPLED, PROMPTS, WAIT, assert_all_gone, assert_same_as,
                        one_rank_and_transformers_ids, read_ids, run_dbrx, write_prompts)
from .test_memory_plan import weight_bytes

# Every mapping also runs through `dbrx run --server ... --output_csv` (test_world_serve.py); here, in
# process, one of each kind of world: 2 ranks starting their own, 4 under mpiexec, 4 starting their own.
RUN = {"tp2": None, "tp2pp2": 4, "moe_tp2ep2": None}  # name -> `mpiexec -n` ranks, or None


@pytest.fixture(scope="module")
def expected(fp32_engine, banned):
    return one_rank_and_transformers_ids(fp32_engine, banned)


@pytest.mark.timeout(2 * WAIT)
@pytest.mark.parametrize("name,ranks", list(RUN.items()))
def test_dbrx_run_of_a_multi_rank_engine_prints_the_one_rank_ids(name, ranks, engine_dir, expected, reference_model,
                                                                  banned, tmp_path):
    result = run_dbrx("run", "--engine_dir", engine_dir(name), "--device", "cpu", "--max_output_len", MAX_NEW,
                      "--end_id", NEVER_SAMPLED, "--input_file", write_prompts(tmp_path / "in.csv"),
                      "--output_csv", tmp_path / "out.csv", ranks=ranks)
    assert result.returncode == 0, result.stderr
    assert_all_gone(result.world)
    assert result.stdout.count("Output [Text") == len(PROMPTS)
    assert_same_as(expected, read_ids(tmp_path / "out.csv"), reference_model, banned)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs (run by bench/gpu_check.sh)")
@pytest.mark.timeout(2 * WAIT)
@pytest.mark.parametrize("name", ["fp32", "tp2", "ep2", "pp2"])
def test_on_two_gpus_every_world_prints_the_one_rank_ids(name, engine_dir, expected, reference_model, banned,
                                                          tmp_path):
    """World 1, tp2, ep2 and pp2 on CUDA (NCCL between the ranks, one GPU each; CUDA graphs of decode
    steps with their all-reduces captured): the CPU's one-rank ids and transformers'."""
    result = run_dbrx("run", "--engine_dir", engine_dir(name), "--device", "cuda", "--max_output_len", MAX_NEW,
                      "--end_id", NEVER_SAMPLED, "--input_file", write_prompts(tmp_path / "in.csv"),
                      "--output_csv", tmp_path / "out.csv")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_all_gone(result.world)
    assert_same_as(expected, read_ids(tmp_path / "out.csv"), reference_model, banned)


@pytest.mark.timeout(2 * WAIT)
def test_a_world_of_the_wrong_size_is_refused_naming_both_sizes_and_every_rank_exits(engine_dir):
    result = run_dbrx("run", "--engine_dir", engine_dir("fp32"), "--device", "cpu", "--max_output_len", 2,
                      "--input_text", "hi", ranks=2)
    assert result.returncode != 0
    assert "has 1 rank but the MPI world has 2: start it with mpirun -n 1" in result.stderr
    assert_all_gone(result.world)


@pytest.mark.timeout(2 * WAIT)
def test_every_rank_takes_the_fewest_kv_blocks_any_rank_can_hold(engine_dir, tmp_path):
    """pp2 under a budget on the edge: rank 1 holds ln_f besides what rank 0 holds, so its budget leaves
    one block fewer, and the world's pool (rank 0's plan, printed) is rank 1's."""
    path = engine_dir("pp2")
    engine, weights = load_engine_dir(path), [weight_bytes(path, rank) for rank in (0, 1)]
    shape = LocalShape.of(engine.config, engine.mapping, 0)
    per_block = PagedKVCache.bytes_per_block(len(shape.layers), LIMITS["tokens_per_block"], shape.n_kv_heads,
                                             engine.config.head_dim, 4)  # rank 1's too: one layer each
    assert 0 < weights[1] - weights[0] < per_block
    budget = weights[0] + 40 * per_block + (weights[1] - weights[0]) // 2  # rank 0: 40 blocks; rank 1: 39
    result = run_dbrx("run", "--engine_dir", path, "--device", "cpu", "--max_output_len", 2, "--input_file",
                      write_prompts(tmp_path / "in.csv"), "--memory_budget_bytes", budget)
    assert result.returncode == 0, result.stderr
    assert_all_gone(result.world)
    assert "KV pool" in result.stderr and ": 39 blocks of 8 tokens" in result.stderr, result.stderr
