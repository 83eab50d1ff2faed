"""bench/decode.py --smoke: the benchmark's own code on a tiny model on the CPU, so
that the script a GPU run depends on stays runnable (no timing is asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "decode.py"


def test_decode_smoke_prints_one_json_object_with_every_run(tmp_path):
    out = subprocess.run([sys.executable, str(BENCH), "--smoke", "--precision", "bf16", "int4", "--group_size", "64",
                          "--summarize", "--plot", str(tmp_path / "plot.png")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result["runs"]) == {"bf16-2L", "int4-2L", "int4g64-2L"} and result["copy_bandwidth_gbs"] > 0
    for run in result["runs"].values():
        assert [(d["batch"], d["context"]) for d in run["decode"]] == [(1, 32), (4, 32)]
        for d in run["decode"]:
            assert d["tokens_per_s"] > 0 and d["bytes_per_step"] > 0 and d["ms_per_step"] > 0
            assert 0 <= d["fraction_of_floor"] <= 1.5  # rounded to 3 places: a slow, shared CPU can show 0.0
        assert run["prefill"][0]["prompt_tokens"] == 48 and run["prefill"][0]["seconds"] > 0
        summarize = run["summarize"]  # the seed's summarize.py shape: every output token counted
        assert (summarize["prompt_tokens"], summarize["output_tokens"]) == (923, 100) and summarize["tokens_per_s"] > 0
    assert (tmp_path / "plot.png").stat().st_size > 10_000


def test_decode_smoke_under_mpiexec_runs_each_layout_on_its_share_of_the_model():
    """Two ranks, as `mpirun -n 2 python bench/decode.py --world 2` runs on two GPUs: each layout's
    engine steps through the world, and rank 0's floor counts only its share of the weights."""
    from dbrx_serve.services.inference.launch import find_mpiexec
    from dbrx_serve.services.inference.world import NVLINK_MULTICAST_OFF

    command = [find_mpiexec(), "-n", "2", sys.executable, str(BENCH), "--smoke", "--precision", "bf16",
               "--world", "2", "--layouts", "tp2", "ep2", "pp2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **NVLINK_MULTICAST_OFF}
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    runs = json.loads(out.stdout.strip().splitlines()[-1])["runs"]
    assert set(runs) == {"bf16-2L-tp2", "bf16-2L-ep2", "bf16-2L-pp2"}
    alone = subprocess.run([sys.executable, str(BENCH), "--smoke", "--precision", "bf16"],
                           capture_output=True, text=True, timeout=300, env=env)
    assert alone.returncode == 0, alone.stderr[-2000:]
    whole = json.loads(alone.stdout.strip().splitlines()[-1])["runs"]["bf16-2L"]["decode"]
    for name, run in runs.items():
        assert [d["layout"] for d in run["decode"]] == [name.rsplit("-", 1)[1]] * 2
        assert run["prefill"][0]["seconds"] > 0
        for d, one_rank in zip(run["decode"], whole):
            assert d["tokens_per_s"] > 0
            if name.endswith("pp2"):  # stages one after another: no one rank's bytes are the step's floor
                assert "fraction_of_floor" not in d
            else:
                assert d["bytes_per_step"] < one_rank["bytes_per_step"] and "fraction_of_floor" in d
    assert all(n <= 2 for d in runs["bf16-2L-ep2"]["decode"] for n in d["active_experts_per_layer"])  # 2 of 4 here
    assert all(len(d["active_experts_per_layer"]) == 1 for d in runs["bf16-2L-pp2"]["decode"])  # 1 of 2 layers


def test_a_layout_that_does_not_fit_the_world_is_refused_and_every_rank_exits():
    from dbrx_serve.services.inference.launch import find_mpiexec

    for layout, said in (("tp4", "with layouts of 2 ranks"), ("xx2", "write it as tpN, epN, ppN")):
        out = subprocess.run([find_mpiexec(), "-n", "2", sys.executable, str(BENCH), "--smoke", "--world", "2",
                              "--layouts", layout], capture_output=True, text=True, timeout=120)
        assert out.returncode != 0 and said in out.stderr


def test_a_stored_tuning_table_is_run_with_and_a_malformed_one_refused(tmp_path):
    """--tuning FILE: the run hands that table to its engines as a build stores it (the CPU's torch backend then
    ignores it; the triton backend's install is tests/services/inference/kernels/test_tuning.py's); a table
    an engine would refuse when it opens is refused first, naming what to fix, and so is --tune beside it."""
    config = {"block_m": 16, "block_n": 64, "block_k": 64, "split_k": 1, "num_warps": 4, "num_stages": 4, "dequant": 1}
    table = {"cpu": {"moe_up:int4:n512:k128:e4": {"1": config}, "moe_down:int4:n128:k256:e4": {"1": config}}}
    (tmp_path / "good.json").write_text(json.dumps(table))
    out = subprocess.run([sys.executable, str(BENCH), "--smoke", "--precision", "int4", "--prefill",
                          "--tuning", str(tmp_path / "good.json")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    run = json.loads(out.stdout.strip().splitlines()[-1])["runs"]["int4-2L"]
    assert run["kernel_tuning"] == table and run["tune"] == str(tmp_path / "good.json")
    (tmp_path / "bad.json").write_text(json.dumps({"cpu": {"moe_up:int4:n512:k128:e4": {"1": config}}}))
    out = subprocess.run([sys.executable, str(BENCH), "--smoke", "--tuning", str(tmp_path / "bad.json")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "must be stored at the same batch buckets with the same block_m" in out.stderr
    assert "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, str(BENCH), "--smoke", "--tune", "fast", "--tuning",
                          str(tmp_path / "good.json")], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "--tuning FILE runs a stored table and --tune makes one" in out.stderr


def test_profile_without_a_gpu_is_refused_with_what_to_do():
    out = subprocess.run([sys.executable, str(BENCH), "--smoke", "--profile", "1"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "--profile times CUDA kernels: run it on a GPU" in out.stderr


def test_decode_rows_runs_the_benchmark_in_process_and_keeps_each_runs_speed(tmp_path):
    """bench/decode.py's decode_rows, what the A/B probes (bench/*_probe.py, split_sums_bound.py) call in
    turn with each kernel: the runs' batch, tokens/s and ms a step, the whole JSON at the path given."""
    sys.path.insert(0, str(BENCH.parent))
    from decode import decode_rows

    rows = decode_rows(str(tmp_path / "run.json"), "bf16", ["1"], "2", "--smoke")
    assert [r["batch"] for r in rows] == [1, 4]  # --smoke's batches
    assert all(set(r) == {"batch", "tokens_per_s", "ms_per_step"} and r["tokens_per_s"] > 0 for r in rows)
    assert "bf16-2L" in json.loads((tmp_path / "run.json").read_text())["runs"]
