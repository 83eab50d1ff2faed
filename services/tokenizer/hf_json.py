"""HF `tokenizer.json` (GPT-2 style byte-level BPE) to tiktoken ranks and back.

A byte-level vocabulary spells each byte as one printable code point
(`bytes_to_unicode`); reversing that mapping gives each token's bytes, and the
token's id is its tiktoken rank (docs/tokenizer.md section 4). `merges` and
the pre-tokenizer are ignored when reading: tiktoken's rank order is the merge
priority and cl100k's pattern applies. The writer exists so that the reader
can be proven on files we make from a known tiktoken file."""

import json
from functools import lru_cache
from pathlib import Path

from dbrx_serve.shared.errors import InvalidInput

from .bpe_file import Ranks, check_ranks, serialize_ranks
from .vocab import CL100K_PAT, check_special_entry

# Oniguruma (HF tokenizers) reads `{1,3}+` as "one or more runs of 1-3", not as
# possessive; a bounded repeat needs no possessive mark, so drop it there.
HF_PAT = CL100K_PAT.replace(r"\p{N}{1,3}+", r"\p{N}{1,3}")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: printable bytes map to themselves, the other 68 to U+0100 onwards."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(0x100 + i) for i, b in enumerate(others)})
    return table


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def token_bytes_of(piece: str, where: str) -> bytes:
    table = unicode_to_bytes()
    try:
        return bytes(table[c] for c in piece)
    except KeyError as error:
        raise InvalidInput(f"{where}: vocabulary entry {piece!r} has {error.args[0]!r}, which is not a "
                           "byte-level BPE character; only GPT-2 style byte-level tokenizers are supported") from None


def piece_of(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def added_token_ids(spec: dict, where: str) -> set[int]:
    """Check each added token against DBRX's table; return their ids."""
    ids = set()
    for entry in spec.get("added_tokens") or []:
        check_special_entry(entry["id"], entry["content"], f"{where} added_tokens")
        ids.add(entry["id"])
    return ids


def ranks_from_spec(spec: dict, where: str) -> Ranks:
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise InvalidInput(f"{where}: expected a BPE model with a vocab (model.type 'BPE'), "
                           f"got model.type {model.get('type')!r}")
    added = added_token_ids(spec, where)
    ranks: Ranks = {}
    for piece, token_id in model["vocab"].items():
        if token_id not in added:
            ranks[token_bytes_of(piece, where)] = token_id
    return ranks


def load_tokenizer_json(path: Path) -> Ranks:
    """Rebuild and check the ranks; a 100,256-entry vocabulary must hash to cl100k_base."""
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidInput(f"{path}: not a JSON file ({error})") from None
    ranks = ranks_from_spec(spec, str(path))
    return check_ranks(ranks, serialize_ranks(ranks), path.name, f"{path} (rebuilt ranks)")


def merges_of(ranks: Ranks) -> list[list[str]]:
    """Every split of a token into two tokens, ordered by the merged token's rank:
    the order tiktoken's BPE applies them (as transformers' TikTokenConverter)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        splits = [(token[:i], token[i:]) for i in range(1, len(token))]
        splits = [s for s in splits if s[0] in ranks and s[1] in ranks]
        splits.sort(key=lambda s: (ranks[s[0]], ranks[s[1]]))
        merges.extend([piece_of(left), piece_of(right)] for left, right in splits)
    return merges


def added_tokens_spec(special_tokens: dict[str, int]) -> list[dict]:
    return [{"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True} for text, i in sorted(special_tokens.items(), key=lambda t: t[1])]


def tokenizer_json_from_ranks(ranks: Ranks, special_tokens: dict[str, int]) -> dict:
    """A tokenizer.json that HF `tokenizers` loads, encoding as the tiktoken file does."""
    split = {"type": "Split", "pattern": {"Regex": HF_PAT}, "behavior": "Isolated", "invert": False}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    vocab = {piece_of(token): rank for token, rank in ranks.items()}
    vocab.update(special_tokens)
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
             "ignore_merges": True, "vocab": vocab, "merges": merges_of(ranks)}
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": added_tokens_spec(special_tokens), "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, byte_level]},
            "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": True,
                                                 "trim_offsets": True, "use_regex": True},
            "model": model}


def write_tokenizer_json(ranks: Ranks, special_tokens: dict[str, int], path: Path) -> Path:
    path.write_text(json.dumps(tokenizer_json_from_ranks(ranks, special_tokens), ensure_ascii=False),
                    encoding="utf-8")
    return path
