"""The OpenAI gateway's own overhead: requests per second and time to first
token of streams sent through `dbrx serve openai` and of the same streams
sent straight to `dbrx serve inference` over gRPC.

    python bench/gateway.py [--engine_dir E] [--device cpu] [--max_new_tokens 16] [--samples 128]
                            [--concurrency 1 16 64]

Without --engine_dir it makes the demo's tiny DBRX (batch up to 64) in a
temporary folder. Both servers are real processes on localhost, the gateway
in front of the inference server. The client is one asyncio process: a
grpc.aio channel for the direct path; for the gateway, a bare HTTP/1.1
connection per stream that POSTs /v1/completions with `stream: true` and
reads the SSE lines (no HTTP library, so the client adds little of its own).
Both paths ask the same thing: the same prompt, greedy, the engine's own
stop ids, --max_new_tokens. For each concurrency, rounds of that many
streams sent at once until --samples streams are measured, after one warm-up
round. Time to first token: from sending to the first message (gRPC) or SSE
event (HTTP) with a token. Requests/s: streams measured over the time the
rounds took. Prints one JSON line.
"""

import argparse
import asyncio
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serve_latency import PROMPT, make_engine, serve, wait_serving

HTTP_REQUEST = ("POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                "Content-Length: {length}\r\nConnection: close\r\n\r\n")


async def grpc_stream(stub, request) -> float:
    """Time to the first message with a token; the stream is read to its end."""
    sent, first = time.perf_counter(), None
    async for message in stub.GenerateStream(request):
        if first is None and message.token_ids:
            first = time.perf_counter()
    return first - sent


async def http_stream(address: str, body: bytes) -> float:
    """Time to the first SSE event (a completion's first is a token); the stream is read to [DONE]."""
    host, port = address.rsplit(":", 1)
    sent, first = time.perf_counter(), None
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(HTTP_REQUEST.format(host=address, length=len(body)).encode() + body)
    status = await reader.readline()
    assert b" 200 " in status, status
    async for line in reader:
        if first is None and line.startswith(b"data: {"):
            first = time.perf_counter()
        if line.startswith(b"data: [DONE]"):
            break
    writer.close()
    return first - sent


async def measure(one_stream, concurrency: int, samples: int) -> dict:
    """Rounds of `concurrency` streams at once (the first a warm-up) until `samples` are measured."""
    ttfts, busy = [], 0.0
    for round_ in range(1 + math.ceil(samples / concurrency)):
        started = time.perf_counter()
        results = await asyncio.gather(*(one_stream() for _ in range(concurrency)))
        if round_:
            ttfts, busy = ttfts + results, busy + time.perf_counter() - started
    return summary(ttfts, busy)


def summary(ttfts: list[float], busy: float) -> dict:
    cuts = statistics.quantiles(ttfts, n=100, method="inclusive")
    return {"streams": len(ttfts), "requests_per_s": round(len(ttfts) / busy, 1),
            "ttft_p50_ms": round(statistics.median(ttfts) * 1e3, 2), "ttft_p99_ms": round(cuts[98] * 1e3, 2)}


async def both(inference: str, gateway: str, concurrency: int, samples: int, max_new_tokens: int) -> dict:
    import grpc

    from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2 as pb, inference_pb2_grpc as pb_grpc

    request = pb.GenerateRequest(text=PROMPT, skip_special_tokens=True,
                                 sampling=pb.SamplingParams(max_new_tokens=max_new_tokens, temperature=0))
    body = json.dumps({"prompt": PROMPT, "max_tokens": max_new_tokens, "temperature": 0, "stream": True}).encode()
    async with grpc.aio.insecure_channel(inference) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        direct = await measure(lambda: grpc_stream(stub, request), concurrency, samples)
    through = await measure(lambda: http_stream(gateway, body), concurrency, samples)
    return {"grpc": direct, "gateway": through,
            "gateway_ttft_p50_overhead_ms": round(through["ttft_p50_ms"] - direct["ttft_p50_ms"], 2)}


def serve_gateway(inference: str) -> tuple[subprocess.Popen, str]:
    from dbrx_serve.cli.demo import wait_for_address

    process = subprocess.Popen([sys.executable, "-m", "dbrx_serve", "serve", "openai", "--inference", inference,
                                "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return process, wait_for_address(process, "openai")


def wait_healthy(gateway: str) -> None:
    import httpx

    while httpx.get(f"http://{gateway}/health").status_code != 200:
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine_dir", default=None, help="default: the demo's tiny model, made here")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--samples", type=int, default=128, help="streams measured per concurrency and path")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine_dir = Path(args.engine_dir) if args.engine_dir else make_engine(Path(tmp), max_batch_size=64)
        processes = []
        try:
            inference_process, inference = serve(engine_dir, args.device)
            processes.append(inference_process)
            wait_serving(inference)
            gateway_process, gateway = serve_gateway(inference)
            processes.append(gateway_process)
            wait_healthy(gateway)
            results = {str(n): asyncio.run(both(inference, gateway, n, args.samples, args.max_new_tokens))
                       for n in args.concurrency}
        finally:
            for process in processes:
                process.terminate()
                process.wait(60)
    print(json.dumps({"device": args.device, "engine": args.engine_dir or "demo tiny DBRX",
                      "max_new_tokens": args.max_new_tokens, "concurrency": results}))


if __name__ == "__main__":
    main()
