"""Streaming detokenization: deltas concatenate to decode(all ids), and no delta
holds part of a UTF-8 character (docs/tokenizer.md section 6)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from dbrx_serve.services.tokenizer.vocab import SPECIAL_TOKENS

ASSIGNED_IDS = st.one_of(st.integers(0, 100255), st.sampled_from(sorted(SPECIAL_TOKENS.values())))
ANY_MODEL_ID = st.integers(0, 100351)


def stream(tok, ids, skip_special_tokens=False) -> list[str]:
    detok = tok.detokenizer(skip_special_tokens)
    return [detok.push(i) for i in ids] + [detok.finish()]


def test_emoji_example(tok):
    assert stream(tok, [40, 3021, 11410, 99, 247]) == ["I", " love", " ", "", "🦙", ""]


def test_cjk_example(tok):
    assert stream(tok, [3574, 244]) == ["", "世", ""]


def test_incomplete_character_at_the_end_becomes_one_replacement(tok):
    assert stream(tok, [40, 3574]) == ["I", "", "\ufffd"]
    assert "".join(stream(tok, [40, 3574])) == tok.decode([40, 3574])


def test_special_tokens_stream_as_text_or_nothing(tok):
    ids = [9906, 100279, 1917]
    assert stream(tok, ids) == ["Hello", "<|im_end|>", " world", ""]
    assert stream(tok, ids, skip_special_tokens=True) == ["Hello", "", " world", ""]


def test_push_many_equals_pushes(tok):
    detok = tok.detokenizer()
    assert detok.push_many([40, 3021, 11410, 99]) + detok.push(247) + detok.finish() == "I love 🦙"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_text_streams_back_whole(tok, text):
    """Hypothesis text (emoji, CJK, combining marks ...): the deltas rebuild it, with no broken character."""
    deltas = stream(tok, tok.encode_text(text))
    assert "".join(deltas) == text == tok.decode(tok.encode_text(text))
    assert all("\ufffd" not in delta for delta in deltas) or "\ufffd" in text


@settings(max_examples=300, deadline=None)
@given(st.lists(ASSIGNED_IDS, max_size=40), st.booleans())
def test_random_ids_stream_as_decode(tok, ids, skip):
    """Any id sequence, valid UTF-8 or not: U+FFFD lands exactly where the one-shot decode puts it."""
    assert "".join(stream(tok, ids, skip)) == tok.decode(ids, skip)


@settings(max_examples=100, deadline=None)
@given(st.lists(ANY_MODEL_ID, max_size=40))
def test_unassigned_ids_stream_as_nothing(tok, ids):
    assert "".join(stream(tok, ids)) == tok.decode(ids)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(categories=["Lo", "Mn", "So", "Nd"]), max_size=30))
def test_multibyte_heavy_text(tok, text):
    assert "".join(stream(tok, tok.encode_text(text))) == text
