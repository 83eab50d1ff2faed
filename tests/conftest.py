"""Fixtures shared by every test: tiny DBRX models made with transformers (the oracle)."""

import logging
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels run in Triton's interpreter (set before triton is imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from dbrx_serve.shared.logs import ContextIds
from dbrx_serve.shared.testing import TinySpec, save_tiny_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"  # ../shared beside the repo


@pytest.fixture(autouse=True)
def logging_undone():
    """Undo what a command run in-process configured (shared/logs.py's `configure`: the root logger's one
    handler, on the stderr pytest captures for that test, and the levels): left, every later line would be
    written to a closed stream ("--- Logging error --- ... I/O operation on closed file", a line of grpc's
    poller thread among them)."""
    root, package = logging.getLogger(), logging.getLogger("dbrx_serve")
    levels = root.level, package.level
    yield
    for handler in [h for h in root.handlers if any(isinstance(f, ContextIds) for f in h.filters)]:
        root.removeHandler(handler)
    root.setLevel(levels[0])
    package.setLevel(levels[1])


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
