"""Our ids equal tiktoken's cl100k_base (built from the same file) on a corpus of
more than 1,000 strings, and decode(encode(x)) == x for every one."""

from tokenizer_corpus import corpus


def test_corpus_is_large_and_varied(shared_dir):
    strings = corpus(shared_dir)
    assert len(strings) >= 1000
    assert len(set(strings)) >= 1000


def test_ordinary_ids_equal_tiktoken(tok, reference, shared_dir):
    strings = corpus(shared_dir)
    ours = tok.encode(strings)
    expected = [reference.encode_ordinary(s) for s in strings]
    mismatches = [s for s, a, b in zip(strings, ours, expected) if a != b]
    assert mismatches == []


def test_allow_special_ids_equal_tiktoken(tok, reference, shared_dir):
    """cl100k's own five specials agree; DBRX's three extra ones are the only difference."""
    strings = [s for s in corpus(shared_dir) if not any(t in s for t in ("<|pad|>", "<|im_start|>", "<|im_end|>"))]
    ours = tok.encode(strings, allow_special_tokens=True)
    assert ours == [reference.encode(s, allowed_special="all") for s in strings]


def test_roundtrip(tok, shared_dir):
    strings = corpus(shared_dir)
    assert tok.decode_batch(tok.encode(strings)) == strings
    assert tok.decode_batch(tok.encode(strings, allow_special_tokens=True)) == strings


def test_batch_equals_one_by_one(tok, shared_dir):
    strings = corpus(shared_dir)[:300]
    assert tok.encode(strings) == [tok.encode_text(s) for s in strings]
