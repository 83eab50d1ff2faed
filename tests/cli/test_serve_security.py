"""Security of `dbrx serve ...` as a person runs it: auth on by default beyond loopback (every
server refuses to start without a token, or the gateway without an API key, unless --insecure);
tokens, API keys and database passwords never in what a run prints or logs."""

import argparse
import logging
import re
import signal
import subprocess
import sys

import httpx
import pytest

from dbrx_serve.cli import serve_all
from dbrx_serve.cli.main import main
from dbrx_serve.client import Client, Unauthenticated
from dbrx_serve.services.gateway import server as gateway
from dbrx_serve.services.inference import launch
from dbrx_serve.services.tokenizer import server as tokenizer

WAIT = 120
TOKEN, API_KEY, PASSWORD = "t0ken-SECRET-1f2e", "k3y-SECRET-9a8b", "pa55-SECRET-7c6d"
SECRETS = (TOKEN, API_KEY, PASSWORD)
EXPOSED = re.compile(r"--host 0\.0\.0\.0 is reachable from other machines.*pass (\S+)")


@pytest.mark.parametrize("argv,secret_flag", [
    (["serve", "tokenizer", "--tokenizer_dir", "/nonexistent"], "--auth_token"),
    (["serve", "converter"], "--auth_token"),
    (["serve", "builder"], "--auth_token"),
    (["serve", "inference", "--engine_dir", "/nonexistent"], "--auth_token"),
    (["serve", "openai", "--inference", "127.0.0.1:1"], "--api_key"),
    (["serve", "all"], "--auth_token"),
    (["serve", "all", "--auth_token", TOKEN, "--engine_dir", "ENGINE"], "--api_key"),
])
@pytest.mark.timeout(60)  # were one to start, it would serve until stopped
def test_every_server_refuses_a_host_beyond_loopback_without_auth(argv, secret_flag, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DBRX_DATABASE_URL", f"sqlite:///{tmp_path / 'jobs.db'}")
    argv = [str(tmp_path) if arg == "ENGINE" else arg for arg in argv]
    assert main([*argv, "--host", "0.0.0.0"]) == 2
    error = capsys.readouterr().err
    assert EXPOSED.search(error).group(1) == secret_flag and "--insecure" in error


def test_insecure_lets_them_listen_beyond_loopback_and_serve_all_passes_it_on(tmp_path):
    parser = argparse.ArgumentParser()
    tokenizer.add_serve_args(parser)
    config = tokenizer.config_from_args(parser.parse_args(["--tokenizer_dir", "T", "--host", "0.0.0.0", "--insecure"]))
    assert config.server.host == "0.0.0.0" and config.server.insecure
    parser = argparse.ArgumentParser()
    gateway.add_serve_args(parser)
    assert gateway.config_from_args(parser.parse_args(["--inference", "h:1", "--host", "0.0.0.0", "--insecure"])).insecure
    args = serve_all.parser().parse_args(["--host", "0.0.0.0", "--insecure", "--engine_dir", str(tmp_path)])
    serve_all.check_exposure(args)
    assert "--insecure" in serve_all.Stages(args).server("tokenizer")


def dbrx(*argv) -> subprocess.Popen:
    """`dbrx --log_level debug ARGV`, stdout and stderr together."""
    return subprocess.Popen([sys.executable, "-m", "dbrx_serve", "--log_level", "debug", *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def until_listening(process: subprocess.Popen, lines: list[str]) -> str:
    for line in process.stdout:
        lines.append(line)
        if match := re.search(r"listening on (\S+)", line):
            return match.group(1)
    raise AssertionError(f"exited before listening: {''.join(lines)}")


def stopped(process: subprocess.Popen, lines: list[str]) -> str:
    process.send_signal(signal.SIGTERM)
    lines.append(process.communicate(timeout=WAIT)[0])
    return "".join(lines)


def tokenizer_calls(address: str) -> None:
    """A tokenizer server with a token, called without it, with a wrong one and with it."""
    for token in (None, "wrong"):
        with Client(address, auth_token=token, timeout=WAIT) as client, pytest.raises(Unauthenticated):
            client.encode(["Hi"])
    with Client(address, auth_token=TOKEN, timeout=WAIT) as client:
        assert client.encode(["Hi"])


def gateway_calls(address: str) -> None:
    """The gateway with an API key (and a token for its unreachable services), asked with a wrong
    key and the right one."""
    for key, status in (("wrong", 401), (API_KEY, 200)):
        answer = httpx.get(f"http://{address}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=WAIT)
        assert answer.status_code == status


def test_tokens_and_api_keys_are_never_printed_or_logged_by_servers(tiny_engine):
    runs = [(dbrx("serve", "tokenizer", "--tokenizer_dir", tiny_engine / "tokenizer", "--port", 0,
                  "--auth_token", TOKEN), tokenizer_calls),
            (dbrx("serve", "openai", "--inference", "127.0.0.1:1", "--port", 0, "--api_key", API_KEY,
                  "--auth_token", TOKEN), gateway_calls)]  # started together: their imports overlap
    for process, calls in runs:
        lines = []
        calls(until_listening(process, lines))
        output = stopped(process, lines)
        assert "listening on" in output and not [secret for secret in SECRETS if secret in output], output


@pytest.fixture
def root_logging():
    """`dbrx --log_level debug` in this process replaces the root logger's handler: put it back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.mark.parametrize("argv", [
    ["serve", "converter", "--port", 0, "--auth_token", TOKEN, "--database_url",
     f"postgresql+psycopg://dbrx:{PASSWORD}@127.0.0.1:5432/test"],  # refused login, or no server there
    ["worker", "builder", "--database_url", f"mysql://dbrx:{PASSWORD}@127.0.0.1/test"],  # no such backend
    ["jobs", "list", "--database_url", f"postgresql+psycopg://dbrx:{PASSWORD}@127.0.0.1:port/test"],  # no parse
])
def test_database_passwords_are_never_printed_or_logged(argv, capsys, root_logging, monkeypatch):
    monkeypatch.delenv("DBRX_DATABASE_URL", raising=False)
    assert main(["--log_level", "debug", *map(str, argv)]) == 2
    output = "".join(capsys.readouterr())
    assert "dbrx:***@127.0.0.1" in output and PASSWORD not in output and TOKEN not in output, output


def test_the_mpi_world_launch_line_hides_secret_flags(caplog):
    argv = ["serve", "inference", "--auth_token", TOKEN, f"--database_url=sqlite:////{PASSWORD}"]
    with caplog.at_level(logging.INFO, "dbrx_serve"):
        assert launch.run_world(argv, 1, program=("-c", "pass")) == 0
    assert "starting an MPI world of 1 ranks" in caplog.text and "--auth_token ***" in caplog.text
    assert TOKEN not in caplog.text and PASSWORD not in caplog.text
