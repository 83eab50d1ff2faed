"""The engine's kernel_tuning table at run time (kernels/tuning.py): installed
for the device's name (the CPU's is "cpu"), the experts' GEMMs launch the
stored configuration of the batch bucket a call falls in, and give the plain
path's numbers; another GPU's table leaves the defaults with a log line; a
malformed table is refused."""

import json
import logging
import shutil
from dataclasses import replace

import pytest
import torch

from dbrx_serve.services.inference.backends import backend_for
from dbrx_serve.services.inference.engine import Engine
from dbrx_serve.services.inference.kernels import moe as moe_module
from dbrx_serve.services.inference.kernels.moe import FusedMoE, expert_weights
from dbrx_serve.services.inference.kernels.tuning import ACTIVE, GemmConfig, device_name, install
from dbrx_serve.shared.errors import InvalidInput

from .conftest import BOUND, DEVICE, relative_error
from .test_moe import CFG, plain_moe

UP, DOWN = "moe_up:int8:n160:k96:e6", "moe_down:int8:n96:k80:e6"  # CFG's experts in int8
STORED = GemmConfig(block_m=16, block_n=64, block_k=64, split_k=2, num_warps=4, num_stages=2, dequant=0)
SMALL = GemmConfig(block_m=32, block_n=128, block_k=64, split_k=1, num_warps=4, num_stages=2, dequant=1)
TABLE = {UP: {"2": SMALL.to_dict(), "4": STORED.to_dict()}, DOWN: {"2": SMALL.to_dict(), "4": STORED.to_dict()}}


@pytest.fixture(autouse=True)
def defaults_after():
    yield
    ACTIVE.table = {}


def launched_configs(monkeypatch, tokens: int) -> tuple[list, torch.Tensor, torch.Tensor]:
    """(the GemmConfigs FusedMoE launched, its output, the plain path's) for `tokens` tokens."""
    configs, launch = [], moe_module.gemm
    monkeypatch.setattr(moe_module, "gemm", lambda *args, **kw: configs.append(args[3]) or launch(*args, **kw))
    plain, fused = plain_moe("int8", torch.float32, seed=1), plain_moe("int8", torch.float32, seed=1).to(DEVICE)
    fused.__class__ = FusedMoE
    x = torch.randn(tokens, CFG.d_model, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return configs, fused(x.to(DEVICE)).cpu(), plain(x)


def test_the_stored_configuration_is_the_one_launched(monkeypatch):
    backend_for("triton", DEVICE).install_tuning({device_name(DEVICE): TABLE}, DEVICE)  # "cpu" on the CPU
    assert expert_weights(plain_moe("int8", torch.float32, 0).fc).key("moe_up") == UP
    configs, got, want = launched_configs(monkeypatch, tokens=3)  # bucket 4 (the smallest >= 3)
    assert configs == [STORED, STORED]
    assert relative_error(got, want) <= 2 * BOUND[torch.float32]
    configs, got, want = launched_configs(monkeypatch, tokens=2)
    assert configs == [SMALL, SMALL] and relative_error(got, want) <= 2 * BOUND[torch.float32]


def test_another_gpus_table_leaves_the_defaults_with_a_log_line(monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="dbrx_serve.inference"):
        install({"Another GPU": TABLE}, DEVICE)
    here = device_name(DEVICE)
    assert caplog.messages == [f"kernel tuning: the engine was tuned on Another GPU, not on this {here}: the default tiles"]
    configs, got, want = launched_configs(monkeypatch, tokens=3)
    fc = expert_weights(plain_moe("int8", torch.float32, 0).fc.to(DEVICE))
    assert configs[0] == moe_module.moe_config(3, CFG.moe_top_k, fc, gated=True) != STORED


@pytest.mark.parametrize("table, match", [
    ({UP: TABLE[UP]}, "must be stored at the same batch buckets with the same block_m"),
    ({**TABLE, DOWN: {"2": SMALL.to_dict(), "4": replace(STORED, block_m=32, split_k=1).to_dict()}},
     "same block_m"),
    ({"moe:int4:n1:k1:e1": {"1": SMALL.to_dict()}}, "a shape key is <op>:<format>:n<N>:k<K>:e<E>"),
    ({"linear:int8:n64:k64:e1": {"one": SMALL.to_dict()}}, "batch buckets \\(positive integers\\)"),
    ({"linear:int8:n64:k64:e1": {"1": {"block_m": 16}}}, "needs exactly block_m, block_n"),
    ({"linear:int8:n64:k64:e1": {"1": {**SMALL.to_dict(), "block_n": 48}}}, "block_n must be a power of two"),
    ({"linear:bfloat16:n64:k64:e1": {"1": replace(SMALL, block_m=8).to_dict()}}, "block_k of 16 or more"),
    ({"linear:int4g64:n64:k64:e1": {"1": replace(SMALL, block_k=128).to_dict()}}, "a tile of 64 x 64 at a time"),
    ({"linear:int8:n64:k64:e1": {"1": replace(SMALL, block_n=32).to_dict()}}, "a tile of 64 x 64 at a time"),
    ({DOWN: TABLE[DOWN]}, "must be stored at the same batch buckets with the same block_m"),
    ({"linear:int8:n64:k64:e1": {"1": replace(SMALL, block_m=8).to_dict()}}, "tensor cores, block_m 16 or more"),
    ({"linear:float16:n64:k64:e1": {"1": replace(SMALL, dequant=3).to_dict()}},
     "dequant 3 converts int8 and int4 weights only"),
    ({"linear:int4:n64:k4096:e1": {"1": GemmConfig(1, 64, 64).to_dict()}}, "tensor cores, block_m 16 or more"),
    ({"linear:int4:n64:k64:e1": {"1": {**SMALL.to_dict(), "block_k": 64, "block_n": 64, "dequant": 2}}},
     "dequant is 0, 1 or 3"),
], ids=range(14))
def test_a_malformed_table_is_refused(table, match):
    with pytest.raises(InvalidInput, match=match):
        install({"NVIDIA H200": table}, torch.device("cpu"))
    with pytest.raises(InvalidInput, match="must map GPU names to tables"):
        install([table], torch.device("cpu"))


def test_an_engine_with_a_malformed_table_is_refused_when_it_opens(engine_dir, tmp_path):
    """The model runner installs the engine's table (before its weights load): a bad one stops it."""
    engine = shutil.copytree(engine_dir("int4"), tmp_path / "engine")
    config = json.loads((engine / "config.json").read_text())
    config["build_config"]["kernel_tuning"] = {"cpu": {UP: TABLE[UP]}}
    (engine / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidInput, match="must be stored at the same batch buckets with the same block_m"):
        Engine.from_dir(engine, backend="triton", verify=False)
    assert ACTIVE.table == {}


def test_the_tuners_gated_k_split_case_launches():
    """The tuner times a K split of int4 gate+up into partial sums of up and gate apart ([split_k, M, 2N]):
    every one written."""
    from dbrx_serve.services.inference.kernels.tuner import GemmCase
    from dbrx_serve.services.inference.kernels.tuning import MOE_UP
    fc = expert_weights(plain_moe("int4", torch.float32, 0).fc.to(DEVICE))
    out = GemmCase(MOE_UP, fc, CFG.moe_top_k, 2).launch(GemmConfig(16, 64, 64, split_k=2, dequant=1))()
    assert out.shape == (2, 2 * CFG.moe_top_k, 2 * CFG.ffn_hidden_size) and bool(torch.isfinite(out).all())
