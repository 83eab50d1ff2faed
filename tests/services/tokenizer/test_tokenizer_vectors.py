"""docs/tokenizer.md's test vectors and facts, on the real cl100k_base file."""

import pytest

from dbrx_serve.services.tokenizer import PROMPT_A, PROMPT_B, Tokenizer
from dbrx_serve.services.tokenizer.vocab import SPECIAL_TOKENS
from dbrx_serve.shared.errors import InvalidInput

ORDINARY = [
    ("Hello world", [9906, 1917]),
    ("The quick brown fox jumps over the lazy dog.", [791, 4062, 14198, 39935, 35308, 927, 279, 16053, 5679, 13]),
    (" hello\n\nworld  ", [24748, 271, 14957, 256]),
    ("Say <|im_end|> now", [46864, 83739, 318, 6345, 91, 29, 1457]),
    ("I love 🦙 and 🎉!", [40, 3021, 11410, 99, 247, 323, 11410, 236, 231, 0]),
    ("你好，世界！", [57668, 53901, 3922, 3574, 244, 98220, 6447]),
    ("def f(x):\n    return x  # ok\n\n\n", [755, 282, 2120, 997, 262, 471, 865, 220, 674, 5509, 1432]),
    ("", []),
]
ALLOW_SPECIAL = [
    ("Say <|im_end|> now", [46864, 220, 100279, 1457]),
    ("a<|endoftext|>b", [64, 100257, 65]),
    ("<|fim_prefix|>", [100258]),
]
CHAT = [
    ([("system", "You are helpful."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye")],
     [100278, 9125, 198, 2675, 527, 11190, 13, 100279, 198, 100278, 882, 198, 13347, 100279, 198, 100278,
      78191, 198, 9906, 0, 100279, 198, 100278, 882, 198, 1383, 68, 100279, 198, 100278, 78191, 198]),
    ([("system", "You are helpful."), ("user", "Hello")],
     [100278, 9125, 198, 2675, 527, 11190, 13, 100279, 198, 100278, 882, 198, 9906, 100279, 198, 100278, 78191, 198]),
]
WORKED_EXAMPLE = "<|im_start|>system\n" + PROMPT_A + "<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("text, ids", ORDINARY)
def test_ordinary_vectors(tok, text, ids):
    assert tok.encode([text]) == [ids]
    assert tok.encode_text(text) == ids
    assert tok.decode(ids) == text


@pytest.mark.parametrize("text, ids", ALLOW_SPECIAL)
def test_allow_special_vectors(tok, text, ids):
    assert tok.encode([text], allow_special_tokens=True) == [ids]
    assert tok.decode(ids) == text


def test_special_text_is_plain_text_by_default(tok):
    assert tok.encode(["a<|endoftext|>b"]) == [[64, 27, 91, 8862, 728, 428, 91, 29, 65]]
    for text, token_id in SPECIAL_TOKENS.items():
        assert token_id not in tok.encode_text(text)
        assert tok.encode_text(text, allow_special_tokens=True) == [token_id]


@pytest.mark.parametrize("messages, ids", CHAT)
def test_chat_vectors(tok, messages, ids):
    assert tok.apply_chat_template(messages, add_generation_prompt=True) == ids


def test_worked_example_prompt_a(tok):
    messages = [{"role": "user", "content": "Hello"}]
    assert tok.render_chat_template(messages, add_generation_prompt=True) == WORKED_EXAMPLE
    ids = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert len(ids) == 186
    assert ids[:8] == [100278, 9125, 198, 2675, 527, 6078, 46913, 11]
    assert ids[-10:] == [198, 100278, 882, 198, 9906, 100279, 198, 100278, 78191, 198]
    assert ids == tok.encoding.encode(WORKED_EXAMPLE, allowed_special="all")


def test_worked_example_prompt_b(cl100k_dir):
    from dbrx_serve.services.tokenizer.loader import load_ranks

    ranks, _ = load_ranks(cl100k_dir)
    ids = Tokenizer(ranks, system_prompt=PROMPT_B).apply_chat_template([("user", "Hello")], True)
    assert len(ids) == 225
    assert ids[:8] == [100278, 9125, 198, 2675, 527, 6078, 46913, 11]
    assert ids[-10:] == [198, 100278, 882, 198, 9906, 100279, 198, 100278, 78191, 198]


def test_sizes_and_ids(tok):
    assert tok.encoding.n_vocab == 100280 == tok.vocab_size
    assert tok.model_vocab_size == 100352
    assert (tok.eos_id, tok.bos_id, tok.pad_id) == (100257, 100257, 100277)
    assert tok.stop_ids == (100257,)
    assert len(tok.special_tokens) == 8


def test_unassigned_mask(tok):
    mask = tok.unassigned_mask()
    assert len(mask) == 100352
    unassigned = [i for i, flag in enumerate(mask) if flag]
    assert unassigned == [100256, *range(100261, 100276), *range(100280, 100352)]
    assert len(unassigned) == 88
    assert len(tok.unassigned_mask(100300)) == 100300


def test_decode_rules(tok):
    assert tok.decode([64, 100279, 65]) == "a<|im_end|>b"
    assert tok.decode([64, 100279, 65], skip_special_tokens=True) == "ab"
    assert tok.decode([100256, 100270, 100351, 64]) == "a"  # unassigned ids give ""
    assert tok.decode([3574]) == "\ufffd"
    assert tok.decode([3574, 244]) == "世"
    assert tok.decode_batch([[9906], [1917], []]) == ["Hello", " world", ""]


@pytest.mark.parametrize("ids", [[100352], [0, -1], [2**32]])
def test_decode_refuses_ids_outside_the_vocabulary(tok, ids):
    with pytest.raises(InvalidInput, match="outside the vocabulary 0..100351"):
        tok.decode(ids)


def test_model_vocab_size_must_hold_every_id(cl100k_dir):
    from dbrx_serve.services.tokenizer.loader import load_ranks

    with pytest.raises(InvalidInput, match="below the tokenizer's 100280 id slots"):
        Tokenizer(load_ranks(cl100k_dir)[0], model_vocab_size=100279)


def test_encode_refuses_lone_surrogates(tok):
    with pytest.raises(InvalidInput, match="text 1 is not valid UTF-8"):
        tok.encode(["fine", "bad \ud800 text"])
