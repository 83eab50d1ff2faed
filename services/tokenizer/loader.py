"""Finding DBRX's BPE in a tokenizer directory, offline, and reading the
checkpoint's other tokenizer facts (docs/tokenizer.md sections 2-4).

Sources are tried in order; the first found wins. Never `tiktoken.get_encoding`:
it downloads a missing file and replaces one whose hash mismatches."""

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dbrx_serve.shared.artifacts import read_json
from dbrx_serve.shared.errors import InvalidInput, NotFound

from .bpe_file import Ranks, check_ranks, load_tiktoken_file, parse_ranks
from .hf_json import load_tokenizer_json
from .vocab import DEFAULT_MODEL_VOCAB_SIZE, DEFAULT_STOP_IDS, NUM_ID_SLOTS, check_special_entry

CL100K_CACHE_NAME = "9b5ad71b2ce5302211f9c61530b329a4922fc6a4"  # sha1 of cl100k_base's blob URL


@dataclass(frozen=True)
class BpeSource:
    """One place ranks may come from: `find` returns a path or None; `load` reads it."""

    description: str
    find: Callable[[Path], Path | None]
    load: Callable[[Path], Ranks]


def find_tiktoken_file(tokenizer_dir: Path) -> Path | None:
    found = sorted(tokenizer_dir.glob("*.tiktoken"))
    if len(found) > 1:
        raise InvalidInput(f"{tokenizer_dir} has {len(found)} *.tiktoken files ({', '.join(p.name for p in found)}); "
                           "keep exactly one")
    return found[0] if found else None


def find_tokenizer_json(tokenizer_dir: Path) -> Path | None:
    path = tokenizer_dir / "tokenizer.json"
    return path if path.is_file() else None


def tiktoken_cache_dir() -> Path | None:
    """tiktoken's own rule; an empty TIKTOKEN_CACHE_DIR disables the cache."""
    for name in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if name in os.environ:
            return Path(os.environ[name]) if os.environ[name] else None
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def find_tiktoken_cache(_tokenizer_dir: Path) -> Path | None:
    cache = tiktoken_cache_dir()
    path = cache / CL100K_CACHE_NAME if cache is not None else None
    return path if path is not None and path.is_file() else None


def load_cache_file(path: Path) -> Ranks:
    """The cache file has a hash for a name, so it must be cl100k_base itself."""
    data = path.read_bytes()
    return check_ranks(parse_ranks(data, str(path)), data, "cl100k_base.tiktoken", str(path))


def cache_description() -> str:
    cache = tiktoken_cache_dir()
    where = cache / CL100K_CACHE_NAME if cache else "disabled by an empty TIKTOKEN_CACHE_DIR"
    return f"tiktoken's cache file ({where})"


BPE_SOURCES = (
    BpeSource("a *.tiktoken file in the directory", find_tiktoken_file, load_tiktoken_file),
    BpeSource("tokenizer.json in the directory", find_tokenizer_json, load_tokenizer_json),
    BpeSource("tiktoken's cache", find_tiktoken_cache, load_cache_file),
)


def load_ranks(tokenizer_dir: Path) -> tuple[Ranks, str]:
    """The first source found, and a description of where the ranks came from."""
    if not tokenizer_dir.is_dir():
        raise NotFound(f"tokenizer directory {tokenizer_dir} does not exist or is not a directory")
    for source in BPE_SOURCES:
        path = source.find(tokenizer_dir)
        if path is not None:
            return source.load(path), str(path)
    raise NotFound(f"no tokenizer in {tokenizer_dir}: looked for (1) a *.tiktoken file there, (2) "
                   f"{tokenizer_dir / 'tokenizer.json'}, (3) {cache_description()}. Put "
                   f"cl100k_base.tiktoken (tiktoken's cl100k_base ranks, docs/tokenizer.md) into {tokenizer_dir}")


def check_added_tokens(tokenizer_dir: Path) -> None:
    """tokenizer_config.json's added_tokens_decoder and added_tokens.json must match DBRX's table."""
    path = tokenizer_dir / "tokenizer_config.json"
    for key, entry in (read_json(path).get("added_tokens_decoder") or {}).items():
        if not key.isdigit() or not isinstance(entry, dict):
            raise InvalidInput(f"{path}: added_tokens_decoder entry {key!r} should map an id to {{\"content\": ...}}")
        check_special_entry(int(key), entry.get("content"), str(path))
    for text, token_id in read_json(tokenizer_dir / "added_tokens.json").items():
        check_special_entry(token_id, text, f"{tokenizer_dir / 'added_tokens.json'}")


def model_vocab_size(tokenizer_dir: Path) -> int:
    """config.json's vocab_size (the logits' width), 100352 when there is no config."""
    config = read_json(tokenizer_dir / "config.json")
    size = config.get("vocab_size", DEFAULT_MODEL_VOCAB_SIZE)
    if not isinstance(size, int) or size < NUM_ID_SLOTS:
        raise InvalidInput(f"{tokenizer_dir / 'config.json'}: vocab_size {size!r} must be an integer of at "
                           f"least {NUM_ID_SLOTS}, the tokenizer's id slots")
    return size


def stop_ids(tokenizer_dir: Path) -> tuple[int, ...]:
    """generation_config.json's eos_token_id (an int or a list); {100257} when absent."""
    path = tokenizer_dir / "generation_config.json"
    eos = read_json(path).get("eos_token_id")
    if eos is None:
        return DEFAULT_STOP_IDS
    ids = eos if isinstance(eos, list) else [eos]
    if not ids or not all(isinstance(i, int) and 0 <= i < NUM_ID_SLOTS for i in ids):
        raise InvalidInput(f"{path}: eos_token_id {eos!r} must be a token id or a non-empty list of them")
    return tuple(ids)


def tokenizer_config(tokenizer_dir: Path) -> dict:
    return read_json(tokenizer_dir / "tokenizer_config.json")
