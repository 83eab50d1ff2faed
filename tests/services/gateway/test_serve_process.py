"""`dbrx serve openai` as a real process: a bad setting exits 2 naming it; on port 0 it says where
it listens, answers OpenAI's client over the inference service, and exits 0 on SIGTERM."""

import signal
import subprocess
import sys

from dbrx_serve.cli.launcher import wait_for_address

from .served import WAIT, client, wait_for_health

COMMAND = [sys.executable, "-m", "dbrx_serve", "serve", "openai"]


def test_a_bad_setting_exits_2_naming_it():
    result = subprocess.run([*COMMAND, "--inference", "localhost"], capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 2 and "dbrx serve openai: a gRPC target is HOST:PORT" in result.stderr


def test_it_serves_on_the_port_it_prints_and_exits_0_on_sigterm(stack):
    process = subprocess.Popen([*COMMAND, "--inference", stack.inference.address, "--port", "0", "--api_key", "k",
                                "--model_name", "tiny-dbrx"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        url = f"http://{wait_for_address(process, 'openai')}"
        wait_for_health(url, 200)
        got = client(url, api_key="k").completions.create(model="tiny-dbrx", prompt="Hi", max_tokens=2)
        assert got.model == "tiny-dbrx" and got.usage.completion_tokens > 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT) == 0
    finally:
        process.kill()
