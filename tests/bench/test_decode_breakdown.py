"""bench/decode.py's per-kernel breakdown (--profile, GPU only): kernels grouped by the bytes they must
read, those bytes (decode_model.step_bytes) on a tiny engine on the CPU, and the routing counted for
them (record_routing on the triton backend, in Triton's interpreter), with and without a step launched
ahead."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from decode import breakdown, gemm_breakdown, seed_context  # noqa: E402
from decode_model import (SMOKE, ModelSpec, bench_limits, bytes_per_step, gemm_launches, make_engine,  # noqa: E402
                          module_bytes, record_routing, step_bytes)


def test_kernels_are_grouped_by_name_with_the_bytes_of_their_group():
    rows = [{"kernel": "gemm_kernel", "calls": 160, "us_total": 5000.0},
            {"kernel": "nvjet_sm90_tst_384x8_64x4_2x1_v_bz_TNT", "calls": 1, "us_total": 280.0},
            {"kernel": "attention_kernel", "calls": 40, "us_total": 150.0},
            {"kernel": "combine_kernel", "calls": 40, "us_total": 50.0},
            {"kernel": "sum_splits_kernel", "calls": 160, "us_total": 400.0},
            {"kernel": "layer_norm_kernel", "calls": 81, "us_total": 200.0},
            {"kernel": "void gemv2T_kernel_val<int, int, __nv_bfloat16, __nv_bfloat16, float, 128", "calls": 2,
             "us_total": 10.0},
            {"kernel": "cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4", "calls": 2,
             "us_total": 10.0}]
    parts = {"gemm": 17_000_000_000, "cublas": 1_233_125_376, "attention": 800_000_000, "other": 16_000_000}
    groups = {g["group"]: g for g in breakdown(rows, parts)}
    assert [g["group"] for g in breakdown(rows, parts)] == ["gemm", "other", "cublas", "attention"]  # by time
    assert groups["gemm"]["calls"] == 160 and groups["gemm"]["kernels"] == ["gemm_kernel"]
    assert groups["gemm"]["gbs"] == round(17e9 / 5000.0 / 1e3, 1)  # 17 GB in 5 ms
    assert groups["cublas"]["calls"] == 5 and groups["cublas"]["us"] == 300.0  # not our gemm kernel
    assert groups["attention"]["us"] == 200.0 and groups["attention"]["gbs"] == 4000.0
    assert groups["other"]["calls"] == 241 and groups["other"]["bytes"] == 16_000_000
    assert groups["cublas"]["gbs"] == round(1_233_125_376 / 300.0 / 1e3, 1)
    assert breakdown([], parts)[0]["gbs"] is None  # no kernel seen: no rate


def test_step_bytes_parts_add_up_to_the_floors_bytes(tmp_path):
    spec = ModelSpec(SMOKE, 2, "int4")
    engine = make_engine(spec, torch.device("cpu"), None, bench_limits([(2, 32)], 8, 48, False), tmp_path)
    active = [3, 4]
    parts = step_bytes(engine, 2, 32, active)
    assert sum(parts.values()) == bytes_per_step(engine, 2, 32, active)
    layers = engine.runner.model.transformer.layers
    mlp = layers[0].mlp
    per_expert = (module_bytes(mlp.fc) + module_bytes(mlp.proj)) // SMOKE["moe_num_experts"]
    assert parts["gemm"] == 7 * per_expert  # on the CPU the attention projections are torch's (cublas)
    assert parts["cublas"] == module_bytes(engine.runner.model.lm_head) + 2 * module_bytes(layers[0].attention)
    head_dim = SMOKE["d_model"] // SMOKE["n_heads"]
    assert parts["attention"] == 2 * 2 * 33 * 2 * SMOKE["kv_n_heads"] * head_dim * 4  # layers, batch, tokens, K+V
    with pytest.raises(ValueError, match="experts taken for 4 layers"):  # two steps' routing: KV counted twice
        step_bytes(engine, 2, 32, active * 2)
    launches = gemm_launches(engine, active)  # the experts' two GEMMs a layer, in the order a step runs them
    assert [name for name, _ in launches] == ["experts gate+up", "experts down"] * 2
    assert [b for _, b in launches[::2]] == [n * module_bytes(mlp.fc) // SMOKE["moe_num_experts"] for n in active]
    assert sum(b for _, b in launches) == parts["gemm"]


def test_gemm_launch_times_are_told_apart_by_their_order_in_the_step():
    launches = [("qkv", 100), ("dense", 80), ("experts gate+up", 4000), ("experts down", 2000)] * 2
    times = [1.0, 2.0, 30.0, 20.0, 3.0, 2.0, 50.0, 20.0]  # us, in the order the kernels ran
    gemms = {g["gemm"]: g for g in gemm_breakdown(times, launches)}
    assert list(gemms) == ["qkv", "dense", "experts gate+up", "experts down"]
    assert gemms["qkv"] == {"gemm": "qkv", "calls": 2, "us": 4.0, "bytes": 200, "gbs": round(200 / 4.0 / 1e3, 1)}
    assert gemms["experts gate+up"]["us"] == 80.0 and gemms["experts gate+up"]["bytes"] == 8000
    assert gemm_breakdown(times[:-1], launches) is None  # not the step's launches: no attribution


def test_record_routing_counts_one_step_whether_or_not_a_step_was_launched_ahead(tmp_path):
    spec = ModelSpec(SMOKE, 2, "bf16")
    engine = make_engine(spec, torch.device("cpu"), "triton", bench_limits([(2, 32)], 8, 48, False), tmp_path)
    assert engine.runner.backend.name == "triton" and engine.executor.feeds_tokens
    engine.lookahead = True  # the GPU's default: each step launches the next before it is read
    seed_context(engine, 2, 32, 8)
    counts = record_routing(engine)  # nothing launched ahead: its own step only
    assert len(counts) == 2 and all(1 <= n <= SMOKE["moe_num_experts"] for n in counts)
    assert engine.lookahead and engine.ahead is None
    engine.step()  # launches the next step ahead
    assert engine.ahead is not None
    counts = record_routing(engine)  # the step ahead is read, the next one counted
    assert len(counts) == 2 and engine.ahead is not None and engine.lookahead
    engine.lookahead = False
    engine.step()  # reads the last step launched ahead
    assert len(record_routing(engine)) == 2


def test_the_read_only_kernel_reads_every_chunk_once():
    """bench/read_bandwidth.py counts every byte of its buffer as read: each program xors its chunks."""
    from read_bandwidth import read_kernel

    block, unroll, programs = 64, 4, 3
    src = torch.randint(-2**31, 2**31 - 1, (block * unroll * programs * 5,), dtype=torch.int32)
    sink = torch.zeros(programs * block, dtype=torch.int32)
    read_kernel[(programs,)](src, sink, src.numel(), BLOCK=block, UNROLL=unroll)
    chunks = src.view(5, programs, unroll, block)  # steps, programs, chunks a step, BLOCK
    want = torch.zeros(programs, block, dtype=torch.int32)
    for step in range(5):
        for u in range(unroll):
            want ^= chunks[step, :, u]
    assert torch.equal(sink.view(programs, block), want)
