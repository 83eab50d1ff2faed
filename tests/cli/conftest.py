"""Engines for the command tests, made by our own converter and builder from the demo's tiny DBRX."""

import pytest

from dbrx_serve.services.builder.build import build
from dbrx_serve.services.builder.options import BuildOptions
from dbrx_serve.services.converter.convert import convert
from dbrx_serve.services.converter.options import ConvertOptions
from dbrx_serve.shared.testing import TinySpec, save_tiny_model

LIMITS = dict(max_batch_size=8, max_input_len=64, max_seq_len=256, max_num_tokens=128)


def convert_and_build(model_dir, root):
    convert(ConvertOptions(str(model_dir), str(root / "ckpt"), dtype="float32"))
    build(BuildOptions(str(root / "ckpt"), str(root / "engine"), **LIMITS))
    return root / "engine"


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir, tmp_path_factory):
    """A fresh convert + build of the tiny model (its tokenizer files are copied into tokenizer/)."""
    return convert_and_build(tiny_model_dir, tmp_path_factory.mktemp("run-engine"))


@pytest.fixture(scope="session")
def engine_without_tokenizer(tmp_path_factory):
    """The same weights (same spec and seed), converted from a directory without tokenizer files."""
    root = tmp_path_factory.mktemp("no-tokenizer")
    save_tiny_model(root / "model", TinySpec(), tokenizer=False)
    engine = convert_and_build(root / "model", root)
    assert not (engine / "tokenizer").exists()
    return engine
