"""`dbrx run --server HOST:PORT` against a real inference service prints the
lines `dbrx run --engine_dir` prints in-process, batched and streamed, with
text, token-id files and a client-side tokenizer."""

import pytest

from dbrx_serve.cli.main import main
from dbrx_serve.shared.rpc import ServerConfig
from tests.services.inference.served import inference_server

TEXTS = ["What is AGI?", "Born in north-east France, Soyer trained as a"]


@pytest.fixture(scope="module")
def served(tiny_engine):
    with inference_server(tiny_engine) as served:
        yield served


def lines(capsys, *argv) -> list[str]:
    assert main(["run", *map(str, argv)]) == 0
    return capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("flags", [
    ["--streaming", "--input_text", *TEXTS],
    ["--input_text", TEXTS[0]],
    ["--streaming", "--stop_words", "e", "--input_text", TEXTS[1]],
    ["--top_k", "0", "--random_seed", "7", "--input_text", TEXTS[0]],  # sampled, seeded: the same draw
])
def test_server_lines_equal_in_process_lines(served, tiny_engine, tiny_model_dir, capsys, flags):
    common = ["--max_output_len", 12, *flags]
    local = lines(capsys, "--engine_dir", tiny_engine, "--device", "cpu", *common)
    assert lines(capsys, "--server", served.address, *common) == local
    assert lines(capsys, "--server", served.address, "--tokenizer_dir", tiny_model_dir, *common) == local
    texts = flags[flags.index("--input_text") + 1:]
    assert [line for line in local if line.startswith("Input")] == [f'Input [Text {i}]: "{t}"' for i, t in enumerate(texts)]


def test_server_ids_from_a_csv_equal_in_process_ids(served, tiny_engine, tmp_path, capsys):
    (tmp_path / "in.csv").write_text("10,20,30,40\n")
    for flag, target, out in (("--engine_dir", tiny_engine, "local.csv"), ("--server", served.address, "remote.csv")):
        lines(capsys, flag, target, "--max_output_len", 12, "--input_file", tmp_path / "in.csv",
              "--output_csv", tmp_path / out)
    assert (tmp_path / "remote.csv").read_text() == (tmp_path / "local.csv").read_text() != ""


def test_a_server_that_wants_a_token_gets_it_from_auth_token(tiny_engine, capsys):
    with inference_server(tiny_engine, server=ServerConfig(auth_token="s3cret")) as served:
        run = ["run", "--server", served.address, "--max_output_len", "4", "--input_text", "hi"]
        assert main(run) == 2 and "unauthenticated" in capsys.readouterr().err
        assert main(run + ["--auth_token", "s3cret"]) == 0
    assert capsys.readouterr().out.startswith('Input [Text 0]: "hi"')


def test_a_bad_request_to_the_server_exits_2_with_the_services_message(served, capsys):
    assert main(["run", "--server", served.address, "--max_output_len", "300", "--input_text", "hi"]) == 2
    assert "invalid_argument" in capsys.readouterr().err


def test_an_unreachable_server_exits_2_with_a_message(capsys):
    assert main(["run", "--server", "127.0.0.1:1", "--max_output_len", "4", "--input_text", "hi"]) == 2
    assert "unavailable" in capsys.readouterr().err
