"""Time to first token and per-token latency of `dbrx serve inference`, for 1
and for 16 concurrent streams, measured by a gRPC client on localhost.

    python bench/serve_latency.py [--engine_dir E] [--device cpu] [--max_new_tokens 64] [--rounds 5]

Without --engine_dir it makes the demo's tiny DBRX, converts and builds it
in a temporary folder (deleted afterwards). The server is a real
`dbrx serve inference` process. Each round sends every stream at once; the
first round warms up and is not counted. Greedy, and the end id is an id no
token owns, so every stream runs its full length. Time to first token: from
sending to the first message with a token; per-token latency: the time
between a stream's first and last token over the tokens between. Prints one
JSON line: p50 and p90 of both per concurrency, and the tokens per second of
all streams together.
"""

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "Born in north-east France, Soyer trained as a"
UNOWNED_ID = 100256  # unassigned in DBRX's vocabulary: never sampled, so never an end


def make_engine(root: Path, max_batch_size: int = 16) -> Path:
    from dbrx_serve.services.builder.build import build
    from dbrx_serve.services.builder.options import BuildOptions
    from dbrx_serve.services.converter.convert import convert
    from dbrx_serve.services.converter.options import ConvertOptions
    from dbrx_serve.shared.testing import TinySpec, save_tiny_model

    save_tiny_model(root / "model", TinySpec())
    convert(ConvertOptions(str(root / "model"), str(root / "ckpt"), dtype="float32"))
    build(BuildOptions(str(root / "ckpt"), str(root / "engine"), max_batch_size=max_batch_size, max_input_len=128,
                       max_seq_len=256, max_num_tokens=512))
    return root / "engine"


async def one_stream(stub, request) -> tuple[float, float, int]:
    """(time to first token, seconds per later token, tokens) of one stream."""
    sent, times = time.perf_counter(), []
    async for message in stub.GenerateStream(request):
        times += [time.perf_counter()] * len(message.token_ids)
    return times[0] - sent, (times[-1] - times[0]) / max(len(times) - 1, 1), len(times)


async def measure(address: str, concurrency: int, rounds: int, max_new_tokens: int) -> dict:
    import grpc

    from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2 as pb, inference_pb2_grpc as pb_grpc

    request = pb.GenerateRequest(text=PROMPT, sampling=pb.SamplingParams(
        max_new_tokens=max_new_tokens, temperature=0, end_id=[UNOWNED_ID]))
    async with grpc.aio.insecure_channel(address) as channel:
        stub, samples, busy, tokens = pb_grpc.InferenceServiceStub(channel), [], 0.0, 0
        for round_ in range(rounds + 1):
            started = time.perf_counter()
            results = await asyncio.gather(*(one_stream(stub, request) for _ in range(concurrency)))
            if round_:  # round 0 warms up
                samples += results
                busy, tokens = busy + time.perf_counter() - started, tokens + sum(r[2] for r in results)
    return summary(samples, tokens / busy)


def summary(samples: list[tuple[float, float, int]], tokens_per_second: float) -> dict:
    def percentiles(values: list[float]) -> dict:
        cuts = statistics.quantiles(values, n=10)
        return {"p50_ms": round(statistics.median(values) * 1e3, 2), "p90_ms": round(cuts[-1] * 1e3, 2)}
    return {"ttft": percentiles([s[0] for s in samples]), "per_token": percentiles([s[1] for s in samples]),
            "streams": len(samples), "tokens_per_second": round(tokens_per_second, 1)}


def serve(engine_dir: Path, device: str) -> tuple[subprocess.Popen, str]:
    from dbrx_serve.cli.demo import wait_for_address

    process = subprocess.Popen([sys.executable, "-m", "dbrx_serve", "serve", "inference", "--engine_dir",
                                str(engine_dir), "--port", "0", "--device", device],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return process, wait_for_address(process, "inference")


def wait_serving(address: str) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        while check(health_pb2.HealthCheckRequest(service="")).status != health_pb2.HealthCheckResponse.SERVING:
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine_dir", default=None, help="default: the demo's tiny model, made here")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine_dir = Path(args.engine_dir) if args.engine_dir else make_engine(Path(tmp))
        process, address = serve(engine_dir, args.device)
        try:
            wait_serving(address)
            results = {str(n): asyncio.run(measure(address, n, args.rounds, args.max_new_tokens)) for n in (1, 16)}
        finally:
            process.terminate()
            process.wait(60)
    print(json.dumps({"device": args.device, "engine": "demo tiny DBRX" if not args.engine_dir else str(engine_dir),
                      "max_new_tokens": args.max_new_tokens, "rounds": args.rounds, "concurrency": results}))


if __name__ == "__main__":
    main()
