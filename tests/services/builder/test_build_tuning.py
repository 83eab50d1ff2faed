"""Build-time kernel tuning (services/builder/kernel_tuning.py): which GEMMs of
an engine get timed and at which batch sizes, and the table the tuner keeps --
chosen here by an injected timer, so the selection is checked on the CPU (a
real timing needs CUDA: bench/gemm_tune.py and `dbrx build` on a GPU)."""

import logging
from dataclasses import replace

import pytest
import torch

from dbrx_serve.services.builder.checkpoint import read_checkpoint
from dbrx_serve.services.builder.convert_pb import options_from_pb, options_to_pb
from dbrx_serve.services.builder.kernel_tuning import decode_buckets, engine_gemms, plan_tuning
from dbrx_serve.services.builder.options import BuildOptions
from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.reference import torch_dtype

from .conftest import read_engine, run_build

pytest.importorskip("triton")
from dbrx_serve.services.inference.kernels.tuner import tune  # noqa: E402
from dbrx_serve.services.inference.kernels.tuning import ACTIVE, LINEAR, MOE_UP, install  # noqa: E402

# BUILD_SPEC's rank (tp1): d_model 64, 4 heads of 16 + 2x2 kv heads: qkv 128 columns; 4 experts of 32.
INT4_GEMMS = {"linear:int4:n128:k64:e1", "linear:int4:n64:k64:e1", "moe_up:int4:n64:k64:e4",
              "moe_down:int4:n64:k32:e4"}
INT8_GEMMS = {key.replace("int4", "int8") for key in INT4_GEMMS}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's build")
def test_a_cpu_build_stores_no_tuning_and_says_so(checkpoints, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="dbrx_serve.builder"):
        config, _ = read_engine(run_build(checkpoints(), tmp_path / "engine", tune="full"))
    assert config["build_config"]["kernel_tuning"] == {}
    assert "kernel tuning: skipped, no CUDA device (the runtime uses its default tiles)" in caplog.messages


def test_tune_is_an_option_of_the_build_request(tmp_path):
    paths = (str(tmp_path / "ckpt"), str(tmp_path / "engine"))
    assert options_from_pb(options_to_pb(BuildOptions(*paths, tune="full"))).tune == "full"
    assert options_from_pb(options_to_pb(BuildOptions(*paths))).tune == "fast"
    with pytest.raises(InvalidInput, match="unknown --tune 'fastest': choose one of off, fast, full"):
        BuildOptions("ckpt", "engine", tune="fastest")
    assert plan_tuning(BuildOptions("ckpt", "engine", tune="off"), None, None) is None


def gemms_of(ckpt) -> list:
    """Every rank's GEMMs of a checkpoint's engine, as the build's plan takes them."""
    return engine_gemms(ckpt.model, ckpt.mapping, ckpt.weight_only, torch_dtype(ckpt.model.torch_dtype))


def test_the_engines_gemms_and_buckets(checkpoints):
    float_gemms = gemms_of(read_checkpoint(checkpoints()))  # float projections run cuBLAS: not ours to tune
    assert {g.weights.key(g.op) for g in float_gemms} == {"moe_up:float32:n64:k64:e4", "moe_down:float32:n64:k32:e4"}
    int4 = gemms_of(read_checkpoint(checkpoints(use_weight_only=True, weight_only_precision="int4")))
    assert {g.weights.key(g.op) for g in int4} == INT4_GEMMS
    options = BuildOptions("ckpt", "engine", max_batch_size=48)
    assert decode_buckets(options.limits(128)) == [1, 2, 4, 8, 16, 32]
    assert decode_buckets(BuildOptions("ckpt", "engine").limits(128)) == [1, 2, 4, 8, 16, 32, 64, 128, 256]


def test_the_tuner_keeps_the_fastest_and_the_experts_share_block_m(checkpoints):
    """int8: a timer that favours half the default block_n for the linears; for the experts, each GEMM's
    own block_m (gate+up: 32, down: 16), down's the costlier to miss: both take 16, the pair's fastest sum,
    though gate+up alone is faster at 32."""
    gemms = gemms_of(read_checkpoint(checkpoints(use_weight_only=True, weight_only_precision="int8")))
    defaults = {}

    def timer(config, case):
        defaults[case.w.key(case.op), case.num_tokens] = case.default
        if case.op == LINEAR:
            return 1.0 + (config.block_n != case.default.block_n // 2) + 0.01 * config.split_k
        favoured, cost = (32, 1.0) if case.op == MOE_UP else (16, 3.0)
        return 1.0 + cost * (config.block_m != favoured) + 0.01 * config.split_k

    steps = []
    table = tune(gemms, [1, 4], "fast", torch.device("cpu"), timer, steps.append)
    assert len(steps) == 8 and set(table) == INT8_GEMMS and all(set(b) == {"1", "4"} for b in table.values())
    for key in ("linear:int8:n128:k64:e1", "linear:int8:n64:k64:e1"):
        for tokens in (1, 4):
            default = defaults[key, tokens]
            assert table[key][str(tokens)] == replace(default, block_n=default.block_n // 2).to_dict()
    assert defaults["moe_up:int8:n64:k64:e4", 1].block_m == 16
    for bucket in ("1", "4"):
        assert table["moe_up:int8:n64:k64:e4"][bucket]["block_m"] == 16
        assert table["moe_down:int8:n64:k32:e4"][bucket]["block_m"] == 16
    try:
        install({"cpu": table}, torch.device("cpu"))  # what the runtime accepts
        assert set(ACTIVE.table) == INT8_GEMMS
    finally:
        ACTIVE.table = {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="timing the kernels needs a CUDA GPU")
def test_a_gpu_build_stores_its_tuning_and_the_runtime_installs_it(checkpoints, tmp_path):
    """The model runner an engine opens installs the table (the build model's tokenizer is not the
    tokenizer an Engine serves with, so the runner is opened alone)."""
    from dbrx_serve.services.inference.engine_dir import load_engine_dir
    from dbrx_serve.services.inference.limits import EngineLimits
    from dbrx_serve.services.inference.model_runner import ModelRunner

    engine = run_build(checkpoints(use_weight_only=True, weight_only_precision="int4"), tmp_path / "engine",
                       max_batch_size=4, max_seq_len=128, tune="fast")
    tables = read_engine(engine)[0]["build_config"]["kernel_tuning"]
    name = torch.cuda.get_device_name()
    assert list(tables) == [name] and set(tables[name]) == INT4_GEMMS
    assert all(set(buckets) == {"1", "2", "4"} for buckets in tables[name].values())
    try:
        loaded = load_engine_dir(engine)
        ModelRunner(loaded, EngineLimits.from_build_config(loaded.build, num_kv_blocks=16), "cuda")
        assert {key: {str(b): c.to_dict() for b, c in buckets.items()} for key, buckets in ACTIVE.table.items()} \
            == tables[name]
    finally:
        ACTIVE.table = {}
