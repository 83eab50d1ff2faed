"""`dbrx run --engine_dir` as a real process: the same greedy lines and ids as
`--hf_model_dir` on the same tiny model; sampling flags, stop words, streaming."""

import pytest
import torch

from dbrx_serve.cli.main import main
from dbrx_serve.services.tokenizer.tokenizer import load_tokenizer
from dbrx_serve.shared.reference import load_hf_model

from ..services.inference.helpers import assert_same_greedy

from .test_run import dbrx


def lines(*args) -> list[str]:
    return dbrx("run", *args).stdout.splitlines()


def test_engine_and_reference_print_the_same_greedy_output(tiny_engine, tiny_model_dir):
    """One prompt at a time (--streaming) the engine computes what the reference does: identical."""
    texts = ["What is AGI?", "Born in north-east France, Soyer trained as a"]
    common = ["--max_output_len", 16, "--input_text", *texts]
    reference = lines("--hf_model_dir", tiny_model_dir, *common)
    assert lines("--engine_dir", tiny_engine, *common, "--streaming", "--device", "cpu") == reference
    one = ["--max_output_len", 16, "--input_text", texts[0]]
    assert lines("--engine_dir", tiny_engine, *one) == lines("--hf_model_dir", tiny_model_dir, *one)


def test_batched_ids_match_the_reference(tiny_engine, tiny_model_dir, tmp_path):
    """All prompts in one batch: the same ids up to float32 near-ties (tests/services/inference/helpers.py)."""
    prompts = [[10, 20, 30, 40], [300, 5, 7], list(range(1, 12))]
    (tmp_path / "in.csv").write_text("".join(",".join(map(str, p)) + "\n" for p in prompts))
    for source, out in (("--hf_model_dir", tiny_model_dir), ("--engine_dir", tiny_engine)):
        dbrx("run", source, out, "--max_output_len", 12, "--input_file", tmp_path / "in.csv",
             "--output_csv", tmp_path / f"{source[2:]}.csv")
    got, want = (read_ids(tmp_path / f"{name}.csv") for name in ("engine_dir", "hf_model_dir"))
    model, banned = load_hf_model(tiny_model_dir), unassigned(tiny_model_dir)
    assert [len(row) for row in got] == [12, 12, 12]
    for prompt, g, w in zip(prompts, got, want):
        assert_same_greedy(g, w, prompt, model, banned)


def read_ids(path) -> list[list[int]]:
    return [[int(x) for x in line.split(",")] for line in path.read_text().splitlines()]


def unassigned(model_dir) -> torch.Tensor:
    tokenizer = load_tokenizer(model_dir)
    return torch.tensor(tokenizer.unassigned_mask(tokenizer.model_vocab_size))


def test_sampling_flags_and_stop_words(tiny_engine):
    sample = ["--engine_dir", tiny_engine, "--max_output_len", 12, "--top_k", 0, "--temperature", 1.0,
              "--input_text", "What is AGI?"]
    first = lines(*sample, "--random_seed", 5)
    assert lines(*sample, "--random_seed", 5) == first
    assert lines(*sample, "--random_seed", 6) != first
    greedy = lines("--engine_dir", tiny_engine, "--max_output_len", 12, "--input_text", "What is AGI?")
    text = greedy[1].removeprefix('Output [Text 0 Beam 0]: "').removesuffix('"')
    stop = text[4:7]
    cut = lines("--engine_dir", tiny_engine, "--max_output_len", 12, "--input_text", "What is AGI?",
                "--stop_words", stop)
    assert cut[1] == f'Output [Text 0 Beam 0]: "{text[:text.find(stop)]}"'


@pytest.mark.parametrize("args,message", [
    (["--max_output_len", "0"], "at least 1"),
    (["--max_output_len", "4", "--top_p", "1.5"], "top_p must lie in (0, 1]"),
    (["--max_output_len", "4", "--temperature", "-1"], "temperature must be >= 0"),
    (["--max_output_len", "300"], "max_seq_len 256"),
])
def test_bad_flags_are_refused_with_a_message(tiny_engine, args, message, capsys):
    assert main(["run", "--engine_dir", str(tiny_engine), "--input_text", "hi", *args]) == 2
    assert message in capsys.readouterr().err


def test_an_engine_without_tokenizer_takes_end_ids_mask_and_stop_words_from_tokenizer_dir(
        engine_without_tokenizer, tiny_model_dir, tmp_path, capsys):
    """--tokenizer_dir gives the engine the reference path's end ids, unassigned-id mask and stop words."""
    run = ["run", "--engine_dir", str(engine_without_tokenizer), "--max_output_len", "12", "--input_text", "What is AGI?"]
    assert main(run) == 2 and "has no tokenizer/: give --tokenizer_dir" in capsys.readouterr().err
    with_tokenizer = run + ["--tokenizer_dir", str(tiny_model_dir), "--output_csv", str(tmp_path / "ids.csv")]
    assert main(with_tokenizer) == 0
    engine_lines = capsys.readouterr().out.splitlines()
    assert engine_lines == lines("--hf_model_dir", tiny_model_dir, *run[3:])  # the mask: no unassigned id
    ids = [int(x) for x in (tmp_path / "ids.csv").read_text().split(",")]
    assert len(ids) == 12
    end_here = copy_tokenizer_files(tiny_model_dir, tmp_path / "tok", eos=ids[5])
    assert main(run + ["--tokenizer_dir", str(end_here), "--output_csv", str(tmp_path / "cut.csv")]) == 0
    assert [int(x) for x in (tmp_path / "cut.csv").read_text().split(",")] == ids[:ids.index(ids[5])]
    capsys.readouterr()
    text = engine_lines[1].removeprefix('Output [Text 0 Beam 0]: "').removesuffix('"')
    stop = text[3:6]
    assert main(run + ["--tokenizer_dir", str(tiny_model_dir), "--stop_words", stop]) == 0
    assert capsys.readouterr().out.splitlines()[1] == f'Output [Text 0 Beam 0]: "{text[:text.find(stop)]}"'


def copy_tokenizer_files(model_dir, target, eos: int):
    """The model's tokenizer files, with generation_config.json naming `eos` as the only end id."""
    import json
    import shutil

    target.mkdir()
    for name in ("tiny_bpe.tiktoken", "tokenizer_config.json", "config.json"):
        shutil.copy(model_dir / name, target / name)
    (target / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos]}))
    return target
