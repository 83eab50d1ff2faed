"""The loader's order (tiktoken file, tokenizer.json, tiktoken's cache), its checks,
and the checkpoint facts it reads (model vocab size, stop ids, default prompt)."""

import base64
import json
from pathlib import Path

import pytest

from dbrx_serve.services.tokenizer import PROMPT_A, PROMPT_B, load_tokenizer
from dbrx_serve.services.tokenizer.bpe_file import serialize_ranks
from dbrx_serve.services.tokenizer.hf_json import write_tokenizer_json
from dbrx_serve.services.tokenizer.loader import CL100K_CACHE_NAME, load_ranks
from dbrx_serve.services.tokenizer.vocab import SPECIAL_TOKENS
from dbrx_serve.shared.errors import InvalidInput, NotFound
from dbrx_serve.shared.testing import TINY_BPE_FILE


@pytest.fixture
def no_cache(monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")


def tiny_ranks(tiny_dir: Path) -> dict[bytes, int]:
    ranks, _ = load_ranks(tiny_dir)
    return ranks


def write_bpe(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def byte_lines(count: int = 256) -> list[bytes]:
    return [base64.b64encode(bytes([b])) + b" " + str(b).encode() for b in range(count)]


def test_tiny_bpe_loads_with_dbrx_ids(tiny_dir):
    tok = load_tokenizer(tiny_dir)
    assert tok.source == str(tiny_dir / TINY_BPE_FILE)
    assert 256 < tok.num_ranks < 1000
    assert tok.vocab_size == 100280 and tok.model_vocab_size == 100352
    assert tok.stop_ids == (100257, 100279)
    assert tok.chat.default_system_prompt is None  # use_default_system_prompt: false
    assert tok.encode_text("<|im_end|>", allow_special_tokens=True) == [100279]
    text = "The quick brown fox 🦙 said: \"We don't know\"."
    assert tok.decode(tok.encode_text(text)) == text
    mask = tok.unassigned_mask()
    assert not any(mask[:tok.num_ranks]) and all(mask[tok.num_ranks:100257])
    assert sum(mask) == 100352 - tok.num_ranks - 8


def test_tiny_model_dir_loads(tiny_model_dir):
    """The full tiny model directory (config.json, weights, tokenizer files) as the lead writes it."""
    tok = load_tokenizer(tiny_model_dir)
    assert tok.model_vocab_size == 100352
    assert tok.stop_ids == (100257, 100279)


def test_tiktoken_file_comes_first(tmp_path, tiny_dir, cl100k_file):
    (tmp_path / TINY_BPE_FILE).write_bytes((tiny_dir / TINY_BPE_FILE).read_bytes())
    write_tokenizer_json(tiny_ranks(tiny_dir), SPECIAL_TOKENS, tmp_path / "tokenizer.json")
    assert load_ranks(tmp_path)[1] == str(tmp_path / TINY_BPE_FILE)


def test_tokenizer_json_is_second(tmp_path, tiny_dir, no_cache):
    write_tokenizer_json(tiny_ranks(tiny_dir), SPECIAL_TOKENS, tmp_path / "tokenizer.json")
    ranks, source = load_ranks(tmp_path)
    assert source == str(tmp_path / "tokenizer.json")
    assert ranks == tiny_ranks(tiny_dir)


def test_tiktoken_cache_is_third(tmp_path, cl100k_file, monkeypatch):
    cache, model = tmp_path / "cache", tmp_path / "model"
    cache.mkdir(), model.mkdir()
    (cache / CL100K_CACHE_NAME).symlink_to(cl100k_file)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    ranks, source = load_ranks(model)
    assert source == str(cache / CL100K_CACHE_NAME) and len(ranks) == 100256


def test_nothing_found_lists_what_was_tried(tmp_path, no_cache):
    with pytest.raises(NotFound) as error:
        load_tokenizer(tmp_path)
    message = str(error.value)
    for part in ["*.tiktoken", "tokenizer.json", "tiktoken's cache", "cl100k_base.tiktoken"]:
        assert part in message


def test_missing_directory(tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        load_tokenizer(tmp_path / "nope")


def test_several_tiktoken_files_are_refused(tmp_path, tiny_dir):
    for name in ["a.tiktoken", "b.tiktoken"]:
        (tmp_path / name).write_bytes((tiny_dir / TINY_BPE_FILE).read_bytes())
    with pytest.raises(InvalidInput, match="2 \\*.tiktoken files"):
        load_ranks(tmp_path)


def test_cl100k_named_file_must_hash(tmp_path, tiny_dir):
    (tmp_path / "cl100k_base.tiktoken").write_bytes((tiny_dir / TINY_BPE_FILE).read_bytes())
    with pytest.raises(InvalidInput, match="sha256 is .* but cl100k_base's is 2239"):
        load_ranks(tmp_path)


def test_cl100k_sized_file_must_hash(tmp_path, cl100k_file):
    lines = cl100k_file.read_bytes().splitlines()
    lines[5000], lines[5001] = lines[5001].split()[0] + b" 5000", lines[5000].split()[0] + b" 5001"
    write_bpe(tmp_path / "renamed.tiktoken", lines)
    with pytest.raises(InvalidInput, match="sha256"):
        load_ranks(tmp_path)


@pytest.mark.parametrize("lines, message", [
    (byte_lines() + [b"not-a-line"], "line 257: expected 'base64 rank'"),
    (byte_lines() + [b"@@@@ 256"], "line 257: invalid base64"),
    (byte_lines() + [base64.b64encode(b"ab") + b" 300"], "ranks must be 0..256"),
    (byte_lines() + [base64.b64encode(b"\x00") + b" 256"], "line 257: token b'\\\\x00' repeats"),
    (byte_lines(255), "255 ranks"),
    (byte_lines(255) + [base64.b64encode(b"ab") + b" 255"], "single bytes \\['0xff'\\] have no rank"),
])
def test_malformed_tiktoken_files_name_file_and_line(tmp_path, lines, message):
    path = write_bpe(tmp_path / "bad.tiktoken", lines)
    with pytest.raises(InvalidInput, match=message) as error:
        load_ranks(tmp_path)
    assert str(path) in str(error.value)


def test_special_tokens_of_the_checkpoint_must_match(tmp_path, tiny_dir):
    (tmp_path / TINY_BPE_FILE).write_bytes((tiny_dir / TINY_BPE_FILE).read_bytes())
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<|im_end|>": 100279, "<|im_start|>": 100277}))
    with pytest.raises(InvalidInput, match="added_tokens.json: id 100277 is '<\\|im_start\\|>'"):
        load_tokenizer(tmp_path)


def test_malformed_added_tokens_decoder(tmp_path, tiny_dir):
    (tmp_path / TINY_BPE_FILE).write_bytes((tiny_dir / TINY_BPE_FILE).read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {"eos": "<|endoftext|>"}}))
    with pytest.raises(InvalidInput, match="added_tokens_decoder entry 'eos'"):
        load_tokenizer(tmp_path)


def test_original_dbrx_tokenizer_files_are_accepted(tmp_path, tiny_dir):
    (tmp_path / TINY_BPE_FILE).write_bytes((tiny_dir / TINY_BPE_FILE).read_bytes())
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<|im_end|>": 100279, "<|im_start|>": 100278,
                                                            "<|pad|>": 100277}))
    decoder = {str(i): {"content": t, "special": True} for t, i in SPECIAL_TOKENS.items()}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder,
                                                                "use_default_system_prompt": True}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 100257}))
    tok = load_tokenizer(tmp_path)
    assert tok.chat.default_system_prompt == PROMPT_A and tok.stop_ids == (100257,)


@pytest.mark.parametrize("config, setting, expected", [
    ({}, "auto", PROMPT_A),
    ({"use_default_system_prompt": False}, "auto", None),
    ({"use_default_system_prompt": False, "chat_template": "{{ 'YOU PROVIDE SHORT RESPONSES ...' }}"}, "auto",
     PROMPT_B),
    ({}, "none", None),
    ({}, "Be brief.", "Be brief."),
])
def test_default_system_prompt(tmp_path, tiny_dir, config, setting, expected):
    (tmp_path / TINY_BPE_FILE).write_bytes((tiny_dir / TINY_BPE_FILE).read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_tokenizer(tmp_path, system_prompt=setting).chat.default_system_prompt == expected


def test_model_vocab_size_comes_from_config(tmp_path, tiny_dir):
    (tmp_path / TINY_BPE_FILE).write_bytes((tiny_dir / TINY_BPE_FILE).read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 100400}))
    assert load_tokenizer(tmp_path).model_vocab_size == 100400
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 1000}))
    with pytest.raises(InvalidInput, match="vocab_size 1000 must be an integer of at least 100280"):
        load_tokenizer(tmp_path)


def test_serialize_ranks_reproduces_the_file(cl100k_file, tok):
    from dbrx_serve.services.tokenizer.bpe_file import parse_ranks

    data = cl100k_file.read_bytes()
    assert serialize_ranks(parse_ranks(data, "cl100k")) == data
