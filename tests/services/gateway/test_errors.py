"""Bad requests get 400, 404, 413 or 422 in OpenAI's error shape, naming the
parameter where there is one, and the gateway keeps serving after them;
unknown parameters are ignored; /health follows the inference service
(503 while it is stopped, 200 once it is back on its port)."""

import contextlib

import httpx
import pytest

from dbrx_serve.services.gateway.config import GatewayConfig
from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.rpc import ServerConfig

from tests.services.inference.served import inference_server

from .served import client, gateway_server, post, wait_for_health

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HI = [{"role": "user", "content": "Hi"}]
BAD = [  # (path, body, status, param)
    (CHAT, {"model": "dbrx"}, 400, "messages"),
    (CHAT, {"messages": []}, 400, "messages"),
    (CHAT, {"messages": "Hi"}, 400, "messages"),
    (CHAT, {"messages": [{"content": "Hi"}]}, 400, "messages"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400,
     "messages"),
    (COMPLETIONS, {"prompt": ""}, 400, "prompt"),
    (COMPLETIONS, {"prompt": []}, 400, "prompt"),
    (COMPLETIONS, {"prompt": [[]]}, 400, "prompt"),
    (COMPLETIONS, {}, 400, "prompt"),
    (COMPLETIONS, {"prompt": "Hi", "max_tokens": 0}, 400, "max_tokens"),
    (COMPLETIONS, {"prompt": "Hi", "max_tokens": 256}, 400, "max_tokens"),  # the engine's max_seq_len
    (CHAT, {"messages": HI, "max_completion_tokens": 10**6}, 400, "max_completion_tokens"),
    (COMPLETIONS, {"prompt": "Hi", "max_tokens": "ten"}, 400, "max_tokens"),
    (COMPLETIONS, {"prompt": "Hi", "temperature": -0.5}, 400, "temperature"),
    (COMPLETIONS, {"prompt": "Hi", "temperature": "hot"}, 400, "temperature"),
    (COMPLETIONS, {"prompt": "Hi", "top_p": 0}, 400, "top_p"),
    (COMPLETIONS, {"prompt": "Hi", "n": 0}, 400, "n"),
    (COMPLETIONS, {"prompt": "Hi", "seed": -1}, 400, "seed"),
    (COMPLETIONS, {"prompt": "Hi", "stop": 5}, 400, "stop"),
    (COMPLETIONS, {"prompt": "Hi", "stream": "maybe"}, 400, "stream"),
    (COMPLETIONS, {"prompt": [-1]}, 400, "prompt"),
    (COMPLETIONS, {"prompt": "Hi", "logprobs": 2}, 400, "logprobs"),
    (CHAT, {"messages": HI, "logprobs": True, "top_logprobs": 3}, 400, "top_logprobs"),
    (CHAT, {"messages": HI, "presence_penalty": 0.5}, 400, "presence_penalty"),
    (CHAT, {"messages": HI, "ignore_eos": True}, 400, "ignore_eos"),
    (CHAT, {"messages": HI, "min_tokens": 4}, 400, "min_tokens"),
    (CHAT, {"messages": HI, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    (CHAT, {"messages": HI, "response_format": {"type": "json_object"}}, 400, "response_format"),
    (COMPLETIONS, {"prompt": "Hi", "stop": [""]}, 400, None),  # refused by the inference service
    (COMPLETIONS, {"prompt": "x " * 100_000}, 400, None),  # parsed in a thread; too long for the engine
    (COMPLETIONS, {"prompt": "Hi", "model": "gpt-4o"}, 404, None),
    (COMPLETIONS, b'{"prompt": "Hi", ', 400, None),
    (COMPLETIONS, b"\xff\xfe not json", 400, None),
    ("/v1/embeddings", {"input": "Hi"}, 404, None),
]


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    return error


def test_bad_requests_get_openai_errors_and_the_gateway_keeps_serving(stack):
    for path, body, status, param in BAD:
        error = assert_openai_error(post(stack.url, path, body), status, param)
        assert len(error["message"]) <= 1100
    huge = post(stack.url, COMPLETIONS, b'{"prompt": "' + b"x" * (20 * 1024 * 1024) + b'"}')
    assert_openai_error(huge, 413)
    assert_openai_error(httpx.get(f"{stack.url}{COMPLETIONS}"), 405)
    got = client(stack.url).completions.create(model="dbrx", prompt="Hi", max_tokens=3, temperature=0,
                                               extra_body={"frobnicate": 1, "presence_penalty": 0})
    assert got.usage.completion_tokens > 0  # unknown and harmless parameters are ignored; still serving


def test_a_request_the_inference_service_refuses_on_prompt_length_is_a_400(stack):
    error = assert_openai_error(post(stack.url, COMPLETIONS, {"prompt": [5] * 200, "max_tokens": 100}), 400)
    assert "max_input_len" in error["message"] or "max_seq_len" in error["message"]


def restartable(engine_dir, port: int = 0):
    return inference_server(engine_dir, server=ServerConfig(port=port))


def test_health_is_503_while_the_inference_service_is_stopped_and_200_once_it_is_back(engine_dir):
    running = contextlib.ExitStack()
    served = running.enter_context(restartable(engine_dir("fp32")))
    port = int(served.address.rsplit(":", 1)[1])
    with running, gateway_server(GatewayConfig(inference=(served.address,))) as url:
        assert httpx.get(f"{url}/health").json() == {"status": "serving"}
        running.close()  # the inference service stops
        wait_for_health(url, 503)
        assert_openai_error(httpx.get(f"{url}/health"), 503)
        refused = post(url, COMPLETIONS, {"prompt": "Hi", "max_tokens": 2}, api_key=None)
        assert assert_openai_error(refused, 503)["type"] == "service_unavailable"
        with restartable(engine_dir("fp32"), port):
            wait_for_health(url, 200)
            assert post(url, COMPLETIONS, {"prompt": "Hi", "max_tokens": 2}, api_key=None).status_code == 200


@pytest.mark.parametrize("settings", [dict(inference=()), dict(inference=("localhost",)),
                                      dict(inference=("a:1",), tokenizer="b:0"), dict(inference=("a:1",), port=-1),
                                      dict(inference=("a:1",), max_request_mb=0), dict(inference=("a:1",), api_key="")])
def test_bad_settings_are_refused_with_what_to_fix(settings):
    with pytest.raises(InvalidInput):
        GatewayConfig(**settings)
