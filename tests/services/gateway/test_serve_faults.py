"""The inference service SIGKILLed under the gateway mid-stream (a real `dbrx serve inference`
process): every open SSE stream ends promptly with an error event in OpenAI's shape (503's
service_unavailable) and `data: [DONE]`, never a hang; the gateway stays up, its /health 503
and new completions 503 while no target serves."""

import asyncio
import json
import signal

import httpx

from dbrx_serve.services.gateway.config import GatewayConfig

from tests.services.inference.served import inference_process, run

from .served import API_KEY, WAIT, gateway_server, post

PROMPTLY = 10.0  # seconds for the gateway's clients to hear the service died: never a deadline's doing
NUM_STREAMS = 4


async def read_events(http: httpx.AsyncClient, url: str, prompt: list[int], first: asyncio.Event) -> list:
    """A streamed completion's `data:` payloads, setting `first` once one has come."""
    payloads, body = [], {"prompt": prompt, "max_tokens": 200, "temperature": 0, "stream": True}
    async with http.stream("POST", f"{url}/v1/completions", json=body) as answer:
        assert answer.status_code == 200
        async for line in answer.aiter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                payloads.append(data if data == "[DONE]" else json.loads(data))
                first.set()
    return payloads


async def until_health(url: str, status: int) -> None:
    async with httpx.AsyncClient(timeout=WAIT) as http:
        while (await http.get(f"{url}/health")).status_code != status:
            await asyncio.sleep(0.05)


def test_sigkill_of_the_inference_service_ends_open_streams_with_an_error_promptly(engine_dir):
    with inference_process(engine_dir("fp32")) as child:
        with gateway_server(GatewayConfig(inference=(child.address,), api_key=API_KEY)) as url:
            async def main():
                firsts = [asyncio.Event() for _ in range(NUM_STREAMS)]
                async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=WAIT) as http:
                    reads = [asyncio.create_task(read_events(http, url, [i + 1, 2, 3], first))
                             for i, first in enumerate(firsts)]
                    await asyncio.gather(*(first.wait() for first in firsts))
                    child.process.send_signal(signal.SIGKILL)
                    streams = await asyncio.wait_for(asyncio.gather(*reads), PROMPTLY)
                    await asyncio.wait_for(until_health(url, 503), PROMPTLY)
                return streams
            streams = run(main())
            late = post(url, "/v1/completions", {"prompt": [1, 2], "max_tokens": 2})
    for payloads in streams:
        assert payloads[-1] == "[DONE]" and all("error" not in p for p in payloads[:-2])
        assert payloads[-2]["error"]["type"] == "service_unavailable", payloads[-2]
    assert late.status_code == 503
