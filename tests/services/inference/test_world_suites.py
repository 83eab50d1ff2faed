"""Tests of this folder, unchanged, on tp2 and pp2 engines: pytest runs them as rank 0 of an MPI
world (`mpiexec -n 1 python -m pytest ... : -n 1 python -m ...executor`), every engine converted with
the mapping's flags (conftest.WORLD_FLAGS). Continuous batching with requests joining at random
steps, aborts freeing blocks at once and the KV pool back to empty, cancellation and deadlines over
a real gRPC server; on pp2 also the int8 KV cache within the one-rank bound (its scales are each
stage's own layers')."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dbrx_serve.services.inference.launch import find_mpiexec

from .multirank import WAIT, assert_all_gone, marked_environment

HERE = Path(__file__).resolve().parent
BATCHING = "test_continuous_batching.py"
CANCELLING = "test_server_cancel.py::test_cancelling_half_of_32_streams_frees_their_blocks_at_once_and_the_rest_finish"
INT8_KV = "test_engine_quantized.py::test_int8_kv_cache_stays_within_a_logit_bound_of_float_kv"
SUITES = {"tp2": ({"tp_size": 2}, [BATCHING, CANCELLING]), "pp2": ({"pp_size": 2}, [BATCHING, CANCELLING, INT8_KV])}


@pytest.mark.timeout(3 * WAIT)
@pytest.mark.parametrize("name", list(SUITES))
def test_the_inference_tests_pass_as_rank_0_of_a_world(name, tmp_path):
    flags, tests = SUITES[name]
    env, mark = marked_environment()
    env["DBRX_TEST_WORLD_FLAGS"] = json.dumps(flags)
    pytest_rank = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "--basetemp", str(tmp_path / "rank0"), *(str(HERE / test) for test in tests)]
    follower = [sys.executable, "-m", "dbrx_serve.services.inference.executor"]
    command = [find_mpiexec(), "-disable-auto-cleanup", "-n", "1", *pytest_rank, ":", "-n", "1", *follower]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=2 * WAIT, cwd=HERE.parents[2])
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0 and " passed" in summary and "failed" not in summary, result.stdout + result.stderr
    assert_all_gone(mark)
