"""`dbrx run --hf_model_dir` (the reference mode) and the command skeleton, run as a real process."""

import subprocess
import sys

import pytest
import torch

from dbrx_serve import __version__
from dbrx_serve.cli.main import SUBCOMMANDS, main
from dbrx_serve.services.tokenizer.tokenizer import load_tokenizer
from dbrx_serve.shared.testing import TinySpec, make_hf_model, save_tiny_model


def dbrx(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "dbrx_serve", *map(str, args)], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"dbrx {args} exited {result.returncode}: {result.stderr}")
    return result


def hf_greedy(prompt: list[int], n: int, banned: torch.Tensor) -> list[int]:
    """transformers' greedy continuation with the unassigned ids suppressed, as our sampler does."""
    hf = make_hf_model(TinySpec())
    ids = torch.tensor([prompt])
    out = hf.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None,
                      suppress_tokens=banned.nonzero()[:, 0].tolist())
    return out[0, len(prompt):].tolist()


def test_version_and_help(capsys):
    assert dbrx("--version").stdout.strip() == f"dbrx-serve {__version__}"
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        assert "usage: dbrx " + name in capsys.readouterr().out


def test_run_input_file_matches_transformers(tiny_model_dir, tmp_path):
    prompts = [[10, 20, 30, 40], [300, 5, 7]]
    (tmp_path / "in.csv").write_text("\n".join(",".join(map(str, p)) for p in prompts) + "\n")
    dbrx("run", "--hf_model_dir", tiny_model_dir, "--max_output_len", 12,
         "--input_file", tmp_path / "in.csv", "--output_csv", tmp_path / "out.csv", "--end_id", 100257)
    rows = [[int(x) for x in line.split(",")] for line in (tmp_path / "out.csv").read_text().splitlines()]
    banned = torch.tensor(load_tokenizer(tiny_model_dir).unassigned_mask(TinySpec().vocab_size))
    assert rows == [hf_greedy(p, 12, banned) for p in prompts]


def test_run_input_text_prints_run_py_lines(tiny_model_dir):
    out = dbrx("run", "--hf_model_dir", tiny_model_dir, "--max_output_len", 6, "--input_text", "Hello world").stdout
    lines = out.splitlines()
    assert lines[0] == 'Input [Text 0]: "Hello world"'
    assert lines[1].startswith('Output [Text 0 Beam 0]: "')
    streamed = dbrx("run", "--hf_model_dir", tiny_model_dir, "--max_output_len", 6, "--streaming",
                    "--input_text", "Hello world").stdout
    assert streamed.splitlines()[:2] == lines[:2]


@pytest.mark.parametrize("args,message", [
    (["--input_file", "missing.csv"], "missing.csv not found"),
    (["--input_text", "hi", "--top_k", "5"], "greedy only"),
    (["--input_text", "hi", "--max_output_len", "0"], "at least 1"),
])
def test_run_refuses_bad_input_with_a_message(tiny_model_dir, args, message):
    base = ["run", "--hf_model_dir", tiny_model_dir, "--max_output_len", 4]
    result = dbrx(*base, *args, check=False)
    assert result.returncode == 2 and message in result.stderr


def test_run_refuses_ids_outside_the_vocabulary(tiny_model_dir, tmp_path):
    (tmp_path / "in.csv").write_text("1,2,999999\n")
    result = dbrx("run", "--hf_model_dir", tiny_model_dir, "--max_output_len", 4, "--input_file",
                  tmp_path / "in.csv", check=False)
    assert result.returncode == 2 and "outside the model's vocabulary" in result.stderr


def test_run_input_file_needs_no_tokenizer(tmp_path):
    """A model directory without tokenizer files runs from token ids."""
    spec = TinySpec(vocab_size=512, seed=5)
    hf = save_tiny_model(tmp_path / "m", spec, tokenizer=False)
    (tmp_path / "in.csv").write_text("1,2,3\n")
    dbrx("run", "--hf_model_dir", tmp_path / "m", "--max_output_len", 5, "--input_file", tmp_path / "in.csv",
         "--output_csv", tmp_path / "out.csv")
    expected = hf.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5, min_new_tokens=5, do_sample=False)[0, 3:]
    assert (tmp_path / "out.csv").read_text() == ",".join(map(str, expected.tolist())) + "\n"
