"""Fixtures shared by every test: tiny DBRX models made with transformers (the oracle)."""

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels run in Triton's interpreter (set before triton is imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from dbrx_serve.shared.testing import TinySpec, save_tiny_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"  # ../shared beside the repo


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} not found: tests need the shared data folder beside the repository")
    return SHARED


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny DBRX with tokenizer files and DBRX's vocabulary size (the demo's model)."""
    path = tmp_path_factory.mktemp("tiny-dbrx")
    save_tiny_model(path, TinySpec())
    return path


@pytest.fixture(scope="session")
def postgres_url() -> str | None:
    return os.environ.get("DBRX_TEST_POSTGRES_URL") or None
