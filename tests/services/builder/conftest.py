"""Tiny DBRX models converted by the converter (its public functions), and helpers
to build engines from them and read what the builder wrote."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dbrx_serve.services.builder.build import build
from dbrx_serve.services.builder.options import BuildOptions
from dbrx_serve.services.converter.convert import convert
from dbrx_serve.services.converter.options import ConvertOptions
from dbrx_serve.shared.artifacts import MANIFEST
from dbrx_serve.shared.testing import TinySpec, save_tiny_model, write_tokenizer_files

# 3 layers (pp2 splits 2 + 1), 4 heads / 2 kv heads, 4 experts, a vocabulary tp2 pads (lm_head).
BUILD_SPEC = TinySpec(d_model=64, n_heads=4, kv_n_heads=2, n_layers=3, ffn_hidden_size=32, moe_num_experts=4,
                      moe_top_k=2, clip_qkv=0.5, vocab_size=511, seed=11)


@pytest.fixture(scope="session")
def build_model(tmp_path_factory) -> tuple[Path, object]:
    """(HF dir with tokenizer files, transformers model) of BUILD_SPEC."""
    path = tmp_path_factory.mktemp("build-model")
    hf = save_tiny_model(path, BUILD_SPEC, tokenizer=False)
    write_tokenizer_files(path)
    return path, hf


@pytest.fixture(scope="session")
def checkpoints(build_model, tmp_path_factory):
    """checkpoints(**convert_flags) -> a checkpoint dir of the build model, converted once per flags."""
    made: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("checkpoints")

    def checkpoint(**flags) -> Path:
        key = tuple(sorted(flags.items()))
        if key not in made:
            out = root / f"ckpt{len(made)}"
            convert(ConvertOptions(str(build_model[0]), str(out), **{"dtype": "float32", **flags}))
            made[key] = out
        return made[key]
    return checkpoint


def run_build(checkpoint_dir, output_dir, **flags) -> Path:
    """A build, untuned unless `tune` is given (on a GPU, tuning has its own tests: test_build_tuning.py)."""
    build(BuildOptions(str(checkpoint_dir), str(output_dir), **{"tune": "off", **flags}))
    return Path(output_dir)


def read_engine(engine_dir: Path) -> tuple[dict, list[dict[str, torch.Tensor]]]:
    """(config.json, tensors of each rank file in rank order)."""
    config = json.loads((engine_dir / "config.json").read_text())
    world = config["pretrained_config"]["mapping"]["world_size"]
    return config, [load_file(engine_dir / f"rank{r}.safetensors") for r in range(world)]


def read_ranks(directory: Path, world_size: int) -> list[dict[str, torch.Tensor]]:
    return [load_file(directory / f"rank{r}.safetensors") for r in range(world_size)]


def copy_without_manifest(checkpoint_dir: Path, target: Path, edit_config=None) -> Path:
    """A checkpoint as TensorRT-LLM's converter writes it: no manifest.json (and an edited config)."""
    shutil.copytree(checkpoint_dir, target)
    (target / MANIFEST).unlink()
    if edit_config is not None:
        config = json.loads((target / "config.json").read_text())
        edit_config(config)
        (target / "config.json").write_text(json.dumps(config, indent=2))
    return target


def leftovers(output_dir: Path) -> list[str]:
    """The output dir and any temporary sibling of it that exist."""
    return sorted(p.name for p in output_dir.parent.iterdir() if p.name.lstrip(".").startswith(output_dir.name))
