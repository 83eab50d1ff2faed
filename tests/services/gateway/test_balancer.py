"""Several inference targets: each request goes to the serving target with
the fewest outstanding requests (ties in turn), a target that does not serve
is skipped, and with none serving a request is 503."""

import asyncio
import socket
from types import SimpleNamespace

import httpx
import pytest

from dbrx_serve.services.gateway.balancer import Balancer, least_outstanding
from dbrx_serve.services.gateway.config import GatewayConfig
from dbrx_serve.shared.errors import Unavailable

from tests.services.inference.served import inference_server, paused, run

from .served import WAIT, gateway_server


def targets(*loads) -> list:
    """A target per load: an int is outstanding requests on a serving target, None one not serving."""
    return [SimpleNamespace(name=i, serving=load is not None, outstanding=load or 0) for i, load in enumerate(loads)]


def test_the_serving_target_with_fewest_outstanding_wins_and_ties_go_in_turn():
    assert least_outstanding(targets(3, 1, 2), 0).name == 1
    assert least_outstanding(targets(None, 5, 2), 0).name == 2  # the idle one does not serve
    assert [least_outstanding(targets(1, 1, 1), turn).name for turn in range(4)] == [0, 1, 2, 0]
    assert least_outstanding(targets(None, None), 0) is None


def test_acquire_counts_outstanding_until_release_and_refuses_when_none_serves():
    balancer = Balancer(("a:1", "b:1"))
    balancer.targets = targets(0, 0)
    first, second = balancer.acquire(), balancer.acquire()
    assert {first.name, second.name} == {0, 1} and first.outstanding == second.outstanding == 1
    balancer.release(first)
    assert balancer.acquire() is first
    balancer.targets = targets(None, None)
    with pytest.raises(Unavailable, match="no inference service is serving"):
        balancer.acquire()


def unused_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_requests_spread_over_two_serving_targets_and_skip_one_that_is_down(engine_dir):
    with inference_server(engine_dir("fp32")) as a, inference_server(engine_dir("fp32")) as b:
        config = GatewayConfig(inference=(unused_address(), a.address, b.address))
        with gateway_server(config) as url:
            async def main():
                async with httpx.AsyncClient(timeout=WAIT) as http:
                    body = {"prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0}
                    with paused(a.engine), paused(b.engine):
                        posts = [asyncio.create_task(http.post(f"{url}/v1/completions", json=body))
                                 for _ in range(4)]
                        waiting = await until_all_waiting((a, b), 4)
                    return waiting, [await p for p in posts]
            waiting, responses = run(main())
    assert waiting == [2, 2]  # each target took half, none went to the one that is down
    assert [r.status_code for r in responses] == [200] * 4


async def until_all_waiting(servers, count: int) -> list[int]:
    """Each server's waiting requests, once `count` wait in all."""
    while sum(waiting := [(await served.stats()).waiting for served in servers]) < count:
        await asyncio.sleep(0.01)
    return waiting
