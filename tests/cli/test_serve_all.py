"""`dbrx serve all` as a person runs it: every stage its own process, ports printed, the services
answering; Ctrl-C (SIGINT) stops them all and leaves no process behind; a stage that dies is
reported and the others are stopped."""

import os
import re
import signal
import subprocess
import sys

import httpx

from dbrx_serve.client import Client

WAIT = 180
ROW = re.compile(r"^  (\S+)\s+(\S+)\s+metrics (\S+)\s+pid (\d+)$")


def serve_all(*flags, database_url: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dbrx_serve", "serve", "all", "--free_ports",
                             "--database_url", database_url, *map(str, flags)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def table(process: subprocess.Popen) -> dict[str, tuple[str, str, int]]:
    """Read until every stage is up: name -> (address, metrics URL, pid)."""
    rows = {}
    for line in process.stdout:
        if match := ROW.match(line.rstrip("\n")):
            rows[match.group(1)] = (match.group(2), match.group(3), int(match.group(4)))
        if line.startswith("Ctrl-C or SIGTERM stops them all"):
            return rows
    raise AssertionError(f"dbrx serve all exited (status {process.wait()}): {process.stderr.read()}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_serve_all_runs_every_stage_and_ctrl_c_leaves_no_process(tiny_engine, tmp_path):
    process = serve_all("--engine_dir", tiny_engine, database_url=f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        rows = table(process)
        assert set(rows) == {"tokenizer", "converter", "converter-worker", "builder", "builder-worker",
                             "inference", "openai"}
        with Client(rows["tokenizer"][0], timeout=WAIT) as tokenizer:
            assert tokenizer.decode(tokenizer.encode(["Hello world"])) == ["Hello world"]
        with Client(rows["converter"][0], timeout=WAIT) as converter:
            assert converter.list_jobs() == []
        assert "dbrx:grpc_requests_total" in httpx.get(rows["tokenizer"][1], timeout=WAIT).text
        assert httpx.get(rows["openai"][0].replace("/v1", "/version"), timeout=WAIT).status_code == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(WAIT) == 0
    finally:
        process.kill()
    assert not [name for name, (_, _, pid) in rows.items() if alive(pid)]


def test_a_stage_that_dies_is_reported_and_the_others_are_stopped(tmp_path):
    process = serve_all(database_url=f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        rows = table(process)
        assert "inference" not in rows and "tokenizer" not in rows
        os.kill(rows["builder-worker"][2], signal.SIGKILL)
        assert process.wait(WAIT) == 1
        stderr = process.stderr.read()
    finally:
        process.kill()
    assert re.search(r"the builder-worker process \(pid \d+\) exited with status -9; stopping the others", stderr)
    assert not [name for name, (_, _, pid) in rows.items() if alive(pid)]
