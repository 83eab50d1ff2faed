"""A real gateway for tests: `build_app(config)` served by uvicorn on 127.0.0.1 (a free port) on
its own event loop in a thread, over real gRPC servers (tests/services/inference/served.py), and
the clients the tests talk to it with: OpenAI's own, and raw HTTP for what OpenAI's client
would never send."""

import asyncio
import contextlib
import json
import threading
import time

import httpx
import openai

from dbrx_serve.services.gateway.config import GatewayConfig
from dbrx_serve.services.gateway.server import listening_socket, uvicorn_server

WAIT = 60
API_KEY = "test-key"


@contextlib.contextmanager
def gateway_server(config: GatewayConfig, healthy: bool = True):
    """Yields the base URL; with `healthy`, once /health answers 200 (a target serves)."""
    sock = listening_socket("127.0.0.1", 0)
    server = uvicorn_server(config)
    thread = threading.Thread(target=asyncio.run, args=(server.serve(sockets=[sock]),), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        wait_until(lambda: server.started, "the gateway did not start")
        if healthy:
            wait_for_health(url, 200)
        yield url
    finally:
        server.should_exit = True
        thread.join(WAIT)


def wait_until(condition, message: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.02)


def wait_for_health(url: str, status: int) -> None:
    wait_until(lambda: httpx.get(f"{url}/health", timeout=WAIT).status_code == status,
               f"/health never answered {status}")


def client(url: str, api_key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=WAIT)


def async_client(url: str, api_key: str = API_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=WAIT)


def post(url: str, path: str, body, api_key: str | None = API_KEY, **kwargs) -> httpx.Response:
    """A raw POST: `body` as JSON, or bytes as they are; api_key None sends no Authorization."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {api_key}"} if api_key else {})
    return httpx.post(f"{url}{path}", content=content, headers=headers, timeout=WAIT, **kwargs)


def events(url: str, path: str, body: dict) -> list:
    """A streamed request's SSE `data:` payloads as they came: JSON objects, then the closing "[DONE]"."""
    payloads = []
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream("POST", f"{url}{path}", json={**body, "stream": True}, headers=headers, timeout=WAIT) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads
