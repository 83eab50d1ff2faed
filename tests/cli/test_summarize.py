"""`dbrx summarize` on a tiny model from a fresh convert + build: summarize.py's
lines (our backend's name, then Hugging Face's with --test_hf); ROUGE as
rouge-score computes it; `--server` gives the tokens the engine gives in-process."""

import re

import numpy as np
import pytest
from rouge_score import rouge_scorer, scoring

from dbrx_serve.cli.main import main
from dbrx_serve.cli.summarize import ROUGE_TYPES, rouge
from tests.services.inference.served import inference_server

from .test_run import dbrx

NUMBER = r"(\d+(?:\.\d+)?(?:e-?\d+)?)"


def flags(shared_dir, *extra) -> list[str]:
    return ["--dataset", str(shared_dir / "data" / "cnn_dailymail_sample.jsonl"), "--max_ite", "2",
            "--output_len", "8", "--max_input_length", "60", *map(str, extra)]


def results(out: str, name: str) -> tuple[float, int, float, dict[str, float]]:
    latency = float(re.search(rf"^{name} \(total latency: {NUMBER} sec\)$", out, re.M).group(1))
    tokens = int(re.search(rf"^{name} \(total output tokens: (\d+)\)$", out, re.M).group(1))
    speed = float(re.search(rf"^{name} \(tokens per second: {NUMBER}\)$", out, re.M).group(1))
    block = out[out.index(f"{name} beam 0 result\n"):].splitlines()[1:1 + len(ROUGE_TYPES)]
    scores = dict(re.fullmatch(rf"  (\w+) : {NUMBER}", line).groups() for line in block)
    return latency, tokens, speed, {key: float(value) for key, value in scores.items()}


def test_summarize_prints_summarize_py_lines_for_the_engine_and_transformers(tiny_engine, tiny_model_dir,
                                                                              shared_dir):
    out = dbrx("summarize", "--engine_dir", tiny_engine, "--hf_model_dir", tiny_model_dir, "--test_hf",
               "--batch_size", 2, "--device", "cpu", *flags(shared_dir)).stdout
    for name in ("dbrx-serve-torch", "Hugging Face"):
        latency, tokens, speed, scores = results(out, name)
        assert 0 < tokens <= 2 * 2 * 8 and speed == pytest.approx(tokens / latency, rel=1e-6)
        assert list(scores) == list(ROUGE_TYPES) and all(0 <= s <= 100 for s in scores.values())
        assert f"{name} Generated : " in out
    assert out.index("dbrx-serve-torch beam 0 result") < out.index("Hugging Face beam 0 result")


def test_rouge_is_rouge_scores_bootstrap_mid_f_measure():
    predictions = ["the cat sat on the mat", "a quick brown fox", "nothing in common", "police said on Monday"]
    references = ["the cat sat on a mat", "the quick brown fox jumps", "entirely different words",
                  "police said on Tuesday that"]
    np.random.seed(0)
    scorer, aggregator = rouge_scorer.RougeScorer(list(ROUGE_TYPES)), scoring.BootstrapAggregator()
    for prediction, reference in zip(predictions, references):
        aggregator.add_scores(scorer.score(reference, prediction))
    direct = {key: value.mid.fmeasure * 100 for key, value in aggregator.aggregate().items()}
    assert rouge(predictions, references) == direct


def test_rouge_of_one_pair_is_its_f_measure_by_hand():
    scores = rouge(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert scores["rouge1"] == pytest.approx(100 * 5 / 6)  # 5 of 6 unigrams either way
    assert scores["rouge2"] == pytest.approx(100 * 3 / 5)  # the cat, cat sat, sat on
    assert scores["rougeL"] == scores["rougeLsum"] == pytest.approx(100 * 5 / 6)  # "the cat sat on mat"
    assert rouge(["same words here"], ["same words here"])["rouge2"] == pytest.approx(100)


def test_server_gives_the_tokens_the_engine_gives_in_process(tiny_engine, tiny_model_dir, shared_dir, capsys):
    common = ["--hf_model_dir", str(tiny_model_dir), *flags(shared_dir)]
    assert main(["summarize", "--engine_dir", str(tiny_engine), "--device", "cpu", *common]) == 0
    local = capsys.readouterr().out
    with inference_server(tiny_engine) as served:
        assert main(["summarize", "--server", served.address, *common]) == 0
    remote = capsys.readouterr().out
    assert results(remote, "dbrx-serve-torch")[1:] != () and untimed(remote) == untimed(local)
    assert results(remote, "dbrx-serve-torch")[1] == results(local, "dbrx-serve-torch")[1]


def untimed(out: str) -> list[str]:
    """Every line but the latency and speed: the summaries, token count and ROUGE."""
    return [line for line in out.splitlines() if "total latency" not in line and "tokens per second" not in line]


@pytest.mark.parametrize("extra,message", [
    (["--max_ite", "0"], "--max_ite must be at least 1"),
    (["--dataset", ""], "give --dataset FILE: a jsonl of CNN/DailyMail records"),
    (["--dataset", "missing.jsonl"], "--dataset missing.jsonl does not exist"),
    (["--dataset", "{empty}"], "holds no records"),
])
def test_bad_flags_are_refused_with_a_message(tiny_engine, tiny_model_dir, shared_dir, capsys, extra, message,
                                              tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    extra = [arg.format(empty=tmp_path / "empty.jsonl") for arg in extra]
    argv = ["summarize", "--engine_dir", str(tiny_engine), "--hf_model_dir", str(tiny_model_dir),
            *flags(shared_dir), *extra]
    assert main(argv) == 2 and message in capsys.readouterr().err
