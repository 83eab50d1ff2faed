"""Stop conditions: stop strings cut the text exactly (across token boundaries,
never streamed past), end ids, and the tokenizer's default stop ids."""

import pytest

from dbrx_serve.services.inference.params import SamplingParams
from dbrx_serve.services.inference.stop import FinishReason, StopChecker, held_back

TEXT = "The quick brown fox jumps over the lazy dog."


def push_all(checker: StopChecker, ids: list[int]) -> tuple[str, FinishReason | None]:
    text = ""
    for token in ids:
        delta, reason = checker.push(token)
        text += delta
        if reason:
            return text, reason
    return text, None


@pytest.mark.parametrize("stop,want", [("fox j", "The quick brown "), ("k b", "The quic"), ("dog.", TEXT[:-4]),
                                       ("e", "Th"), ("cat", None)])
def test_stop_strings_cut_the_streamed_text_exactly(fp32_engine, stop, want):
    tokenizer = fp32_engine.tokenizer
    ids = tokenizer.encode_text(TEXT)
    checker = StopChecker((), 100, (stop, "never here"), tokenizer.detokenizer())
    streamed, reason = push_all(checker, ids)
    if want is None:
        assert reason is None and streamed + checker.finish(FinishReason.LENGTH)[0] == TEXT
    else:
        assert (streamed, checker.text, reason) == (want, want, FinishReason.STOP)


def test_held_back_is_the_longest_tail_that_could_start_a_stop_string():
    assert held_back("abc fo", ("fox", "o")) == 2
    assert held_back("abc", ("xyz",)) == 0
    assert held_back("ab", ("abab",)) == 2


def test_engine_stops_at_a_stop_string_across_tokens(fp32_engine):
    free = fp32_engine.generate([[10, 20, 30, 40]], SamplingParams(max_new_tokens=24, temperature=0))[0]
    stop = free.text[6:10]
    cut = fp32_engine.generate([[10, 20, 30, 40]], SamplingParams(max_new_tokens=24, temperature=0, stop=stop))[0]
    assert cut.finish_reason is FinishReason.STOP
    assert cut.text == free.text[:free.text.find(stop)]
    assert free.output_ids[:len(cut.output_ids)] == cut.output_ids


def test_an_end_id_ends_generation_and_adds_no_token(fp32_engine):
    free = fp32_engine.generate([[300, 5, 7]], SamplingParams(max_new_tokens=16, temperature=0))[0]
    end = free.output_ids[5]
    first = free.output_ids.index(end)
    ended = fp32_engine.generate([[300, 5, 7]], SamplingParams(max_new_tokens=16, temperature=0, end_id=end))[0]
    assert ended.finish_reason is FinishReason.END_ID and ended.output_ids == free.output_ids[:first]
    assert ended.text == fp32_engine.tokenizer.decode(list(free.output_ids[:first]))


def test_default_stop_ids_come_from_the_tokenizer(fp32_engine):
    assert fp32_engine.stop_checker(SamplingParams()).end_ids == {100257, 100279}
    assert fp32_engine.stop_checker(SamplingParams(end_id=(5,))).end_ids == {5}
