"""Tiny engines for the inference tests: the demo's tiny DBRX (d_model 64, DBRX's
vocabulary, the tiny BPE) converted and built by our own converter and builder.

Under DBRX_TEST_WORLD_FLAGS (converter flags as JSON, e.g. {"tp_size": 2}) every engine is built
with those flags too: test_world_suites.py runs tests of this folder that way, as rank 0 of an MPI
world, unchanged."""

import json
import os
from pathlib import Path

import pytest
import torch

from dbrx_serve.services.builder.build import build
from dbrx_serve.services.builder.options import BuildOptions
from dbrx_serve.services.converter.convert import convert
from dbrx_serve.services.converter.options import ConvertOptions
from dbrx_serve.services.inference.engine import Engine
from dbrx_serve.services.tokenizer.tokenizer import load_tokenizer
from dbrx_serve.shared.reference import load_hf_model
from dbrx_serve.shared.testing import TinySpec, save_tiny_model

# tune off: on a GPU the runtime's tests keep the default tiles (tuning has its own tests: test_build_tuning.py)
LIMITS = dict(max_batch_size=64, max_input_len=128, max_seq_len=256, max_num_tokens=256, tokens_per_block=8,
              tune="off")
ENGINES = {  # name -> converter flags
    "fp32": dict(dtype="float32"),
    "int8": dict(dtype="float32", use_weight_only=True, weight_only_precision="int8"),
    "int4": dict(dtype="float32", use_weight_only=True, weight_only_precision="int4"),
    "int8kv": dict(dtype="float32", int8_kv_cache=True),
    "bf16int8kv": dict(dtype="bfloat16", int8_kv_cache=True),
    "tp2": dict(dtype="float32", tp_size=2),
    "tp4": dict(dtype="float32", tp_size=4),
    "pp2": dict(dtype="float32", pp_size=2),
    "tp2pp2": dict(dtype="float32", tp_size=2, pp_size=2),
    "ep2": dict(dtype="float32", tp_size=2, moe_ep_size=2),
    "ep4": dict(dtype="float32", tp_size=4, moe_ep_size=4),
    "moe_tp2ep2": dict(dtype="float32", tp_size=4, moe_tp_size=2, moe_ep_size=2),
    "pp2int8kv": dict(dtype="float32", pp_size=2, int8_kv_cache=True),
    "int4g128": dict(dtype="float32", use_weight_only=True, weight_only_precision="int4", group_size=128),
}
# Engines of the wide tiny model: the demo's is 64 wide, less than one group of 128.
WIDE_ENGINES = {"int4g128"}
WIDE_SPEC = TinySpec(d_model=256, ffn_hidden_size=128, init_std=0.05, seed=2)  # qkv, fc, dense: 2 groups of 128; proj: 1
WORLD_FLAGS = json.loads(os.environ.get("DBRX_TEST_WORLD_FLAGS", "{}"))
if WORLD_FLAGS:
    ENGINES = {name: {**flags, **WORLD_FLAGS} for name, flags in ENGINES.items()}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids OpenMP contention on a small, shared CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def engine_dirs() -> dict[str, Path]:
    """name -> engine dir, built lazily by `engine_dir(name)`."""
    return {}


@pytest.fixture(scope="session")
def wide_model_dir(tmp_path_factory) -> Path:
    """The tiny DBRX of WIDE_SPEC, with the same tokenizer files and vocabulary."""
    path = tmp_path_factory.mktemp("wide-dbrx")
    save_tiny_model(path, WIDE_SPEC)
    return path


@pytest.fixture(scope="session")
def engine_dir(tiny_model_dir, tmp_path_factory, engine_dirs, request):
    def make(name: str) -> Path:
        if name not in engine_dirs:
            root = tmp_path_factory.mktemp(f"engine-{name}")
            model_dir = request.getfixturevalue("wide_model_dir") if name in WIDE_ENGINES else tiny_model_dir
            convert(ConvertOptions(str(model_dir), str(root / "ckpt"), **ENGINES[name]))
            build(BuildOptions(str(root / "ckpt"), str(root / "engine"), **LIMITS))
            engine_dirs[name] = root / "engine"
        return engine_dirs[name]
    return make


@pytest.fixture(scope="session")
def fp32_engine(engine_dir) -> Engine:
    """Shared by tests that leave it empty (every request finished or aborted)."""
    return Engine.from_dir(engine_dir("fp32"))


@pytest.fixture(scope="session")
def reference_model(tiny_model_dir):
    return load_hf_model(tiny_model_dir, torch.float32)


@pytest.fixture(scope="session")
def banned(tiny_model_dir) -> torch.Tensor:
    tokenizer = load_tokenizer(tiny_model_dir)
    return torch.tensor(tokenizer.unassigned_mask(tokenizer.model_vocab_size))
