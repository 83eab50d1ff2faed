"""Tokenizer fixtures: directories that point at ../shared/data/cl100k_base.tiktoken
(a link, never a copy), the lead's tiny BPE, and tiktoken's own cl100k_base
built from that same file as the oracle."""

from pathlib import Path

import pytest
import tiktoken

from dbrx_serve.services.tokenizer import load_tokenizer
from dbrx_serve.shared.testing import write_tokenizer_files


@pytest.fixture(scope="session")
def cl100k_file(shared_dir) -> Path:
    return shared_dir / "data" / "cl100k_base.tiktoken"


@pytest.fixture(scope="session")
def cl100k_dir(tmp_path_factory, cl100k_file) -> Path:
    """A tokenizer dir holding only a link to the shared cl100k_base file."""
    path = tmp_path_factory.mktemp("cl100k")
    (path / cl100k_file.name).symlink_to(cl100k_file)
    return path


@pytest.fixture(scope="session")
def tok(cl100k_dir):
    """DBRX's tokenizer on the real cl100k ranks (no tokenizer_config: prompt A)."""
    return load_tokenizer(cl100k_dir)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The tiny byte-level BPE and tokenizer files that tiny test models ship."""
    path = tmp_path_factory.mktemp("tiny-tokenizer")
    write_tokenizer_files(path)
    return path


@pytest.fixture(scope="session")
def reference(cl100k_file):
    """tiktoken's own cl100k_base (pattern and specials from tiktoken_ext), from the shared file,
    loaded with tiktoken's cache disabled so that nothing is downloaded or written."""
    import tiktoken_ext.openai_public as openai_public
    from tiktoken.load import load_tiktoken_bpe

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", "")
        patch.setattr(openai_public, "load_tiktoken_bpe",
                      lambda _url, expected_hash: load_tiktoken_bpe(str(cl100k_file), expected_hash))
        return tiktoken.Encoding(**openai_public.cl100k_base())
