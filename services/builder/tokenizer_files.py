"""The tokenizer files an engine carries in `tokenizer/`, so that it runs on
text without the HF model directory.

Source: `--tokenizer_dir`, else the HF model directory the checkpoint's
manifest names as its input, when that holds a tokenizer. Without either the
engine is built anyway, and runs on token ids only.
"""

import shutil
from pathlib import Path

from dbrx_serve.shared.artifacts import write_json
from dbrx_serve.shared.errors import InvalidInput

from .checkpoint import Checkpoint

TOKENIZER_DIR = "tokenizer"
BPE_PATTERNS = ("*.tiktoken", "tokenizer.json")  # one of these makes a tokenizer
SIDE_FILES = ("tokenizer_config.json", "generation_config.json", "special_tokens_map.json", "added_tokens.json")


def bpe_files(directory: Path) -> list[Path]:
    return sorted(p for pattern in BPE_PATTERNS for p in directory.glob(pattern) if p.is_file())


def tokenizer_source(ckpt: Checkpoint, asked: str | None) -> Path | None:
    """The directory to copy from, or None (no tokenizer)."""
    if asked:
        path = Path(asked).absolute()
        if not path.is_dir() or not bpe_files(path):
            raise InvalidInput(f"--tokenizer_dir {path} holds no tokenizer (a *.tiktoken file or tokenizer.json)")
        return path
    for entry in (ckpt.manifest or {}).get("inputs", []):
        path = Path(entry.get("path", ""))
        if path.is_dir() and bpe_files(path):
            return path
    return None


def copy_tokenizer(source: Path, engine_dir: Path, vocab_size: int) -> list[str]:
    """Copy the BPE and its side files; a config.json with the model's vocab_size (the
    tokenizer reads the logits' width from it). Returns the names written."""
    target = engine_dir / TOKENIZER_DIR
    target.mkdir()
    files = bpe_files(source) + [source / name for name in SIDE_FILES if (source / name).is_file()]
    for path in files:
        shutil.copyfile(path, target / path.name)
    write_json(target / "config.json", {"vocab_size": vocab_size})
    return sorted(p.name for p in files) + ["config.json"]
