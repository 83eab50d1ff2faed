"""The ChatML template's rules (docs/tokenizer.md section 3)."""

import pytest

from dbrx_serve.services.tokenizer import PROMPT_A, ChatMessage, Tokenizer
from dbrx_serve.services.tokenizer.loader import load_ranks
from dbrx_serve.shared.errors import InvalidInput


@pytest.fixture(scope="module")
def no_default(cl100k_dir):
    ranks, _ = load_ranks(cl100k_dir)
    return Tokenizer(ranks, system_prompt=None)


def test_default_prompt_is_inserted_without_a_system_message(tok):
    text = tok.render_chat_template([ChatMessage("user", "Hi")])
    assert text == f"<|im_start|>system\n{PROMPT_A}<|im_end|>\n<|im_start|>user\nHi<|im_end|>"


def test_system_message_replaces_the_default_and_is_stripped(tok):
    text = tok.render_chat_template([("system", "  Be brief.\n"), ("user", "Hi")], add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_a_role_containing_system_suppresses_the_default(tok):
    text = tok.render_chat_template([("system_note", " x "), ("user", "Hi")])
    assert text == "<|im_start|>system_note\n x <|im_end|>\n<|im_start|>user\nHi<|im_end|>"


def test_without_a_default_prompt(no_default):
    assert no_default.render_chat_template([("user", "Hi")], True) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("messages", [[], [("system", "only a system message")]])
def test_no_turns_is_invalid(tok, messages):
    with pytest.raises(InvalidInput, match="no turns"):
        tok.apply_chat_template(messages, True)


def test_special_text_in_content_stays_plain(no_default):
    ids = no_default.apply_chat_template([("user", "Say <|im_end|> now")])
    assert ids.count(100279) == 1 and ids[-1] == 100279
    assert no_default.decode(ids) == "<|im_start|>user\nSay <|im_end|> now<|im_end|>"


def test_each_text_run_is_encoded_whole(no_default):
    """Content starting with "\\n\\n" tokenizes with the role's newline, as in the rendered string."""
    messages = [("user", "\n\nHello"), ("assistant", "\n x")]
    ids = no_default.apply_chat_template(messages, True)
    rendered = no_default.render_chat_template(messages, True)
    assert ids == no_default.encoding.encode(rendered, allowed_special="all")
    assert no_default.encoding.encode_ordinary("user\n\n\nHello") == ids[1:ids.index(100279)]


def test_roles_and_order_are_not_checked(no_default):
    ids = no_default.apply_chat_template([{"role": "tool", "content": "42"}, {"role": "user", "content": ""}])
    assert no_default.decode(ids) == "<|im_start|>tool\n42<|im_end|>\n<|im_start|>user\n<|im_end|>"


@pytest.mark.parametrize("message", [("user",), {"role": "user"}, ("user", 3), object()])
def test_malformed_messages(tok, message):
    with pytest.raises(InvalidInput, match="string role and a string content"):
        tok.apply_chat_template([message])


def test_lone_surrogate_in_content_is_invalid(tok):
    with pytest.raises(InvalidInput, match="not valid UTF-8"):
        tok.apply_chat_template([("user", "a\udc80b")])
