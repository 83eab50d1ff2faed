"""Tiny DBRX models for the converter's tests and helpers to read what it wrote."""

import json
import os
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from dbrx_serve.services.converter.convert import convert
from dbrx_serve.services.converter.options import ConvertOptions
from dbrx_serve.shared.testing import TinySpec, save_tiny_model

POSTGRES_URL = os.environ.get("DBRX_TEST_POSTGRES_URL")

# 4 heads, 2 kv heads (tp4 replicates them), 4 experts of 32 columns (moe_tp4: 8 each),
# 3 layers (pp2 splits 2 + 1), a vocabulary tp4 does not divide (lm_head padding).
SHARD_SPEC = TinySpec(d_model=64, n_heads=4, kv_n_heads=2, n_layers=3, ffn_hidden_size=32, moe_num_experts=4,
                      moe_top_k=2, clip_qkv=0.5, vocab_size=510, seed=7)


@pytest.fixture(scope="session")
def shard_model(tmp_path_factory) -> tuple[Path, object]:
    """(HF dir, transformers model) of SHARD_SPEC, saved in several safetensors shards, no tokenizer."""
    path = tmp_path_factory.mktemp("shard-model")
    hf = save_tiny_model(path, SHARD_SPEC, tokenizer=False, max_shard_size="60KB")
    return path, hf


def run_convert(model_dir, output_dir, **flags) -> Path:
    convert(ConvertOptions(str(model_dir), str(output_dir), **flags))
    return Path(output_dir)


def read_checkpoint(ckpt_dir: Path) -> tuple[dict, list[dict[str, torch.Tensor]]]:
    """(config.json, tensors of each rank file in rank order)."""
    config = json.loads((ckpt_dir / "config.json").read_text())
    ranks = [load_file(ckpt_dir / f"rank{r}.safetensors") for r in range(config["mapping"]["world_size"])]
    return config, ranks


def leftovers(output_dir: Path) -> list[str]:
    """The output dir and any temporary sibling of it that exist."""
    return sorted(p.name for p in output_dir.parent.iterdir() if p.name.lstrip(".").startswith(output_dir.name))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh SQLite file, or a fresh PostgreSQL schema when DBRX_TEST_POSTGRES_URL is set."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("set DBRX_TEST_POSTGRES_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    schema = f"converter_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
