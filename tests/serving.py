"""A grpc.aio server run by its own event loop in a thread, for tests whose
clients are synchronous (the CLI, sync stubs); a server's Prometheus metrics read."""

import asyncio
import contextlib
import threading

import httpx
from prometheus_client.parser import text_string_to_metric_families

from dbrx_serve.shared import rpc

WAIT = 60


@contextlib.contextmanager
def served_in_thread(build, start=rpc.start, on_stop=None):
    """`build()` -> (server, port), called on the server's loop, then `start(server)`; yields
    "127.0.0.1:PORT". At the end the server stops, then `on_stop(server)` is awaited."""
    ready, stop, port = threading.Event(), None, []

    async def main():
        nonlocal stop
        stop = asyncio.Event()
        server, bound = build()
        await start(server)
        port.append(bound)
        ready.set()
        await stop.wait()
        await server.stop(None)
        rpc.stop_metrics(server)
        if on_stop is not None:
            await on_stop(server)

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(WAIT), "the test server did not start"
    try:
        yield f"127.0.0.1:{port[0]}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(WAIT)
        loop.close()


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics page, by (name, labels)."""
    text = httpx.get(url, timeout=WAIT).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)
