"""bench/decode.py's per-kernel breakdown (--profile, GPU only): kernels grouped by the bytes they must
read, and those bytes (decode_model.step_bytes) on a tiny engine on the CPU."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from decode import breakdown  # noqa: E402
from decode_model import SMOKE, ModelSpec, bench_limits, bytes_per_step, make_engine, module_bytes, step_bytes  # noqa: E402


def test_kernels_are_grouped_by_name_with_the_bytes_of_their_group():
    rows = [{"kernel": "gemm_kernel", "calls": 160, "us_total": 5000.0},
            {"kernel": "nvjet_sm90_tst_384x8_64x4_2x1_v_bz_TNT", "calls": 1, "us_total": 280.0},
            {"kernel": "attention_kernel", "calls": 40, "us_total": 150.0},
            {"kernel": "combine_kernel", "calls": 40, "us_total": 50.0},
            {"kernel": "sum_splits_kernel", "calls": 160, "us_total": 400.0},
            {"kernel": "layer_norm_kernel", "calls": 81, "us_total": 200.0}]
    parts = {"gemm": 17_000_000_000, "cublas": 1_233_125_376, "attention": 800_000_000, "other": 16_000_000}
    groups = {g["group"]: g for g in breakdown(rows, parts)}
    assert [g["group"] for g in breakdown(rows, parts)] == ["gemm", "other", "cublas", "attention"]  # by time
    assert groups["gemm"]["calls"] == 160 and groups["gemm"]["kernels"] == ["gemm_kernel"]  # not cuBLAS's "gemm"
    assert groups["gemm"]["gbs"] == 3400.0  # 17 GB in 5 ms
    assert groups["attention"]["us"] == 200.0 and groups["attention"]["gbs"] == 4000.0
    assert groups["other"]["calls"] == 241 and groups["other"]["bytes"] == 16_000_000
    assert groups["cublas"]["gbs"] == round(1_233_125_376 / 280.0 / 1e3, 1)
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
