"""Float engines: config.json in trtllm-build's shape, rank files that load into
DbrxModel with strict=True per rank, tp1 logits equal to transformers', the
tokenizer copied in, the manifest verified."""

import json

import pytest
import torch

from dbrx_serve import __version__
from dbrx_serve.services.builder.engine_config import BACKEND
from dbrx_serve.shared.artifacts import verify_manifest
from dbrx_serve.shared.config import DbrxConfig
from dbrx_serve.shared.mapping import Mapping
from dbrx_serve.shared.model import DbrxModel, LocalShape

from .conftest import BUILD_SPEC, read_engine, read_ranks, run_build

DEFAULT_BUILD = {"max_batch_size": 2048, "max_input_len": BUILD_SPEC.max_seq_len, "max_seq_len": BUILD_SPEC.max_seq_len,
                 "max_num_tokens": 8192, "max_beam_width": 1, "kv_cache_type": "paged", "tokens_per_block": 32,
                 "kv_cache_dtype": "model", "backend": BACKEND, "weight_layout": "plain", "weight_only": None,
                 "kernel_tuning": {},
                 "plugin_config": {"gpt_attention_plugin": "auto", "gemm_plugin": None, "moe_plugin": "auto",
                                   "context_fmha": "enable", "remove_input_padding": "enable"}}


def tokens(length: int = 24) -> torch.Tensor:
    return torch.randint(0, BUILD_SPEC.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))


def engine_model(config: dict, tensors: dict, rank: int = 0) -> DbrxModel:
    """The rank's DbrxModel from the engine's pretrained_config, loaded with strict=True."""
    cfg = DbrxConfig.from_checkpoint_dict(config["pretrained_config"])
    m = config["pretrained_config"]["mapping"]
    mapping = Mapping(m["tp_size"], m["pp_size"], m["moe_tp_size"], m["moe_ep_size"])
    model = DbrxModel(cfg, LocalShape.of(cfg, mapping, rank)).eval()
    model.load_state_dict(tensors, strict=True)
    return model


@torch.no_grad()
def test_float32_tp1_engine_reproduces_transformers_logits(build_model, checkpoints, tmp_path):
    model_dir, hf = build_model
    engine = run_build(checkpoints(), tmp_path / "engine")
    config, ranks = read_engine(engine)
    ids = tokens()
    logits = engine_model(config, ranks[0])(ids, torch.arange(ids.shape[1])[None])
    ref = hf(ids).logits
    assert ((logits - ref).abs().max() / ref.abs().max()).item() <= 1e-4


def test_config_has_trtllm_build_shape_and_defaults(checkpoints, tmp_path):
    ckpt = checkpoints()
    config, _ = read_engine(run_build(ckpt, tmp_path / "engine"))
    assert list(config) == ["version", "pretrained_config", "build_config"]
    assert config["version"] == __version__
    assert config["pretrained_config"] == json.loads((ckpt / "config.json").read_text())
    build_config = dict(config["build_config"])
    assert build_config.pop("build_options")["max_input_len"] == 1024  # asked; clipped to max_seq_len
    assert build_config == DEFAULT_BUILD


def test_limits_and_plugin_flags_are_recorded(checkpoints, tmp_path):
    config, _ = read_engine(run_build(checkpoints(), tmp_path / "engine", max_batch_size=8, max_input_len=100,
                                      max_seq_len=200, max_num_tokens=512, tokens_per_block=64,
                                      gemm_plugin="float16", context_fmha="disable"))
    build_config = config["build_config"]
    assert [build_config[k] for k in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens",
                                      "tokens_per_block")] == [8, 100, 200, 512, 64]
    assert build_config["plugin_config"]["gemm_plugin"] == "float16"
    assert build_config["plugin_config"]["context_fmha"] == "disable"


@pytest.mark.parametrize("flags", [{"tp_size": 2}, {"tp_size": 2, "pp_size": 2, "moe_ep_size": 2}],
                         ids=["tp2", "tp2-pp2-ep2"])
def test_sharded_engine_ranks_load_strict_and_equal_the_checkpoint(flags, checkpoints, tmp_path):
    ckpt = checkpoints(**flags)
    config, ranks = read_engine(run_build(ckpt, tmp_path / "engine", workers=2))
    world = Mapping.from_flags(**flags).world_size
    assert len(ranks) == world
    for rank, (got, want) in enumerate(zip(ranks, read_ranks(ckpt, world))):
        engine_model(config, got, rank)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_manifest_verifies_and_names_the_checkpoint(checkpoints, tmp_path):
    ckpt = checkpoints()
    manifest = verify_manifest(run_build(ckpt, tmp_path / "engine"))
    assert manifest["producer"]["name"] == "dbrx-serve builder"
    assert manifest["inputs"][0]["path"] == str(ckpt)
    assert {"config.json", "rank0.safetensors", "tokenizer/tiny_bpe.tiktoken"} <= {f["path"] for f in manifest["files"]}


def test_tokenizer_comes_from_the_hf_dir_the_checkpoint_names(build_model, checkpoints, tmp_path):
    engine = run_build(checkpoints(), tmp_path / "engine")
    names = sorted(p.name for p in (engine / "tokenizer").iterdir())
    assert names == ["config.json", "generation_config.json", "tiny_bpe.tiktoken", "tokenizer_config.json"]
    assert (engine / "tokenizer" / "tiny_bpe.tiktoken").read_bytes() == (build_model[0] / "tiny_bpe.tiktoken").read_bytes()
    assert json.loads((engine / "tokenizer" / "config.json").read_text()) == {"vocab_size": BUILD_SPEC.vocab_size}
