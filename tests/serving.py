"""A grpc.aio server run by its own event loop in a thread, for tests whose
clients are synchronous (the CLI, sync stubs)."""

import asyncio
import contextlib
import threading

from dbrx_serve.shared import rpc

WAIT = 60


@contextlib.contextmanager
def served_in_thread(build):
    """`build()` -> (server, port), called on the server's loop; yields "127.0.0.1:PORT"."""
    ready, stop, port = threading.Event(), None, []

    async def main():
        nonlocal stop
        stop = asyncio.Event()
        server, bound = build()
        await rpc.start(server)
        port.append(bound)
        ready.set()
        await stop.wait()
        await server.stop(None)

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
