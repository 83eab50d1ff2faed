"""tokenizer.json <-> tiktoken ranks: a file written from the ranks reads back to
the same ranks and the same ids, HF `tokenizers` agrees with it, and the
byte-level alphabet is GPT-2's."""

import json

import pytest

from dbrx_serve.services.tokenizer import Tokenizer, load_tokenizer
from dbrx_serve.services.tokenizer.hf_json import (bytes_to_unicode, load_tokenizer_json, merges_of,
                                                  tokenizer_json_from_ranks, write_tokenizer_json)
from dbrx_serve.services.tokenizer.loader import load_ranks
from dbrx_serve.services.tokenizer.vocab import SPECIAL_TOKENS
from dbrx_serve.shared.errors import InvalidInput

from tokenizer_corpus import corpus


@pytest.fixture(scope="module")
def cl100k_json_dir(tmp_path_factory, tok):
    """A tokenizer.json written from the shared cl100k_base ranks, and nothing else."""
    path = tmp_path_factory.mktemp("cl100k-json")
    ranks, _ = load_ranks(tok_dir(tok))
    write_tokenizer_json(ranks, SPECIAL_TOKENS, path / "tokenizer.json")
    return path


def tok_dir(tok):
    from pathlib import Path

    return Path(tok.source).parent


def test_byte_level_alphabet():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[0] == "\u0100"
    assert table[ord("a")] == "a" and table[0xAD] == "\u0143"


def test_cl100k_rebuilt_from_tokenizer_json(cl100k_json_dir, tok, shared_dir, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    spec = json.loads((cl100k_json_dir / "tokenizer.json").read_text(encoding="utf-8"))
    assert spec["model"]["vocab"]["ĠðŁ"] == 11410
    rebuilt = load_tokenizer(cl100k_json_dir)
    assert rebuilt.source.endswith("tokenizer.json")
    assert rebuilt.encoding._mergeable_ranks == tok.encoding._mergeable_ranks
    strings = corpus(shared_dir)
    assert rebuilt.encode(strings) == tok.encode(strings)
    assert rebuilt.encode(strings, allow_special_tokens=True) == tok.encode(strings, allow_special_tokens=True)


def test_tampered_cl100k_tokenizer_json_fails_the_hash(tmp_path, cl100k_json_dir):
    spec = json.loads((cl100k_json_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    vocab["Ġthe"], vocab["Ġand"] = vocab["Ġand"], vocab["Ġthe"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(InvalidInput, match="sha256"):
        load_tokenizer_json(tmp_path / "tokenizer.json")


def test_tiny_rebuilt_from_tokenizer_json(tmp_path, tiny_dir, shared_dir):
    ranks, _ = load_ranks(tiny_dir)
    write_tokenizer_json(ranks, SPECIAL_TOKENS, tmp_path / "tokenizer.json")
    assert load_tokenizer_json(tmp_path / "tokenizer.json") == ranks
    strings = corpus(shared_dir)
    assert Tokenizer(load_tokenizer_json(tmp_path / "tokenizer.json")).encode(strings) == Tokenizer(ranks).encode(strings)


def test_hf_tokenizers_agree_with_the_written_file(tmp_path, tiny_dir, shared_dir):
    """The writer makes a real tokenizer.json: HF `tokenizers` encodes it as tiktoken does."""
    tokenizers = pytest.importorskip("tokenizers")
    ranks, _ = load_ranks(tiny_dir)
    path = write_tokenizer_json(ranks, SPECIAL_TOKENS, tmp_path / "tokenizer.json")
    hf = tokenizers.Tokenizer.from_file(str(path))
    ours = Tokenizer(ranks)
    strings = corpus(shared_dir)
    assert [hf.encode(s, add_special_tokens=False).ids for s in strings] == ours.encode(strings, True)


def test_added_tokens_must_match_the_table(tmp_path, tiny_dir):
    ranks, _ = load_ranks(tiny_dir)
    spec = tokenizer_json_from_ranks(ranks, SPECIAL_TOKENS)
    spec["added_tokens"][0]["content"] = "<|begin_of_text|>"
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(InvalidInput, match="id 100257 is '<\\|begin_of_text\\|>'"):
        load_tokenizer_json(tmp_path / "tokenizer.json")


def test_non_byte_level_vocab_is_refused(tmp_path, tiny_dir):
    ranks, _ = load_ranks(tiny_dir)
    spec = tokenizer_json_from_ranks(ranks, SPECIAL_TOKENS)
    spec["model"]["vocab"]["▁word"] = len(ranks)
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(InvalidInput, match="not a byte-level BPE character"):
        load_tokenizer_json(tmp_path / "tokenizer.json")


def test_merges_follow_rank_order():
    """Grouped by the merged token's rank; within a token, by the parts' ranks."""
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256, b"abc": 257, b"bc": 258}
    assert merges_of(ranks) == [["a", "b"], ["a", "bc"], ["ab", "c"], ["b", "c"]]
