"""`dbrx tokenize`: one JSON object per input, from arguments or stdin."""

import io
import json

import pytest

from dbrx_serve.cli.tokenize import main


def lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_encode_arguments(cl100k_dir, capsys):
    assert main(["--tokenizer_dir", str(cl100k_dir), "Hello world", "Say <|im_end|> now"]) == 0
    assert lines(capsys) == [{"text": "Hello world", "ids": [9906, 1917]},
                             {"text": "Say <|im_end|> now", "ids": [46864, 83739, 318, 6345, 91, 29, 1457]}]


def test_allow_special_tokens(cl100k_dir, capsys):
    assert main(["--tokenizer_dir", str(cl100k_dir), "--allow_special_tokens", "Say <|im_end|> now"]) == 0
    assert lines(capsys)[0]["ids"] == [46864, 220, 100279, 1457]


def test_decode_arguments(cl100k_dir, capsys):
    assert main(["--tokenizer_dir", str(cl100k_dir), "--decode", "[9906, 1917]", "40,3021 11410,99,247"]) == 0
    assert lines(capsys) == [{"text": "Hello world", "ids": [9906, 1917]},
                             {"text": "I love 🦙", "ids": [40, 3021, 11410, 99, 247]}]


def test_stdin(cl100k_dir, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO('"你好，世界！"\n\n"a\\nb"\n'))
    assert main(["--tokenizer_dir", str(cl100k_dir)]) == 0
    assert lines(capsys) == [{"text": "你好，世界！", "ids": [57668, 53901, 3922, 3574, 244, 98220, 6447]},
                             {"text": "a\nb", "ids": [64, 198, 65]}]


def test_stdin_decode_with_skip(cl100k_dir, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("[9906, 100279]\n"))
    assert main(["--tokenizer_dir", str(cl100k_dir), "--decode", "--skip_special_tokens"]) == 0
    assert lines(capsys) == [{"text": "Hello", "ids": [9906, 100279]}]


def test_missing_tokenizer_dir(tmp_path, capsys):
    assert main(["--tokenizer_dir", str(tmp_path / "nope"), "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--decode", "100352"], "outside the vocabulary"),
    (["--decode", "[1, \"x\"]"], "list of integers"),
    (["--decode", "one two"], "cannot read token ids"),
])
def test_bad_input_exits_2_with_a_message(tiny_dir, capsys, args, message):
    assert main(["--tokenizer_dir", str(tiny_dir), *args]) == 2
    assert message in capsys.readouterr().err


def test_bad_stdin_line(tiny_dir, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("not json\n"))
    assert main(["--tokenizer_dir", str(tiny_dir)]) == 2
    assert "stdin line 1: expected a JSON string" in capsys.readouterr().err
