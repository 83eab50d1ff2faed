"""Encode throughput: in-process vs through the gRPC TokenizerService.

    python bench/tokenizer.py [--tokenizer_dir T] [--batch_sizes 1 16 256] [--min_seconds 2]

Texts are ~2 KB slices of CNN/DailyMail articles (../shared/data). The server
runs as its own process (`python -m dbrx_serve.services.tokenizer.server`), as
in deployment; the client is one synchronous stub that also turns the reply
into Python lists, as a caller would. Prints one JSON object: MB/s (UTF-8
bytes of input per second) for tiktoken's `encode_ordinary` on one thread, for
our library's batched `Tokenizer.encode`, and for the service, per batch size,
with service/in-process ratios. The three run interleaved, batch by batch, so
that other load on the machine weighs on each alike."""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from dbrx_serve.services.tokenizer import load_tokenizer
from dbrx_serve.shared.generated.dbrx.serve.v1 import tokenizer_pb2 as pb
from dbrx_serve.shared.generated.dbrx.serve.v1 import tokenizer_pb2_grpc as pb_grpc

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer_dir", help="default: a temporary dir linking ../shared/data/cl100k_base.tiktoken")
    parser.add_argument("--dataset", default=str(SHARED / "data" / "cnn_dailymail_sample.jsonl"))
    parser.add_argument("--text_bytes", type=int, default=2048)
    parser.add_argument("--num_texts", type=int, default=1024, help="distinct texts the batches cycle through")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16, 256])
    parser.add_argument("--min_seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--num_threads", type=int, default=0, help="encoding threads, in-process and server")
    return parser.parse_args()


def default_tokenizer_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="bench-tokenizer-"))
    (path / "cl100k_base.tiktoken").symlink_to(SHARED / "data" / "cl100k_base.tiktoken")
    return path


def load_texts(dataset: str, text_bytes: int, count: int) -> list[str]:
    """Slices of about text_bytes UTF-8 bytes, cut on character boundaries."""
    texts = []
    with open(dataset, encoding="utf-8") as lines:
        for line in lines:
            data = json.loads(line)["article"].encode("utf-8")
            for start in range(0, len(data) - text_bytes + 1, text_bytes):
                texts.append(data[start:start + text_bytes].decode("utf-8", errors="ignore"))
            if len(texts) >= count:
                return texts[:count]
    return texts


def batches(texts: list[str], size: int):
    """An endless cycle of batches over the texts."""
    while True:
        for start in range(0, len(texts) - size + 1, size):
            yield texts[start:start + size]


def compare(modes: dict, texts: list[str], batch_size: int, min_seconds: float) -> dict:
    """Each batch goes through every mode in turn, so a busy machine slows all of them alike.
    MB/s = input bytes / time summed over the calls; after one warm-up call per mode."""
    source = batches(texts, batch_size)
    for encode_batch in modes.values():
        encode_batch(next(source))
    seconds, done_bytes, calls, start = dict.fromkeys(modes, 0.0), 0, 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds * len(modes) or calls < 3:
        batch = next(source)
        for name, encode_batch in modes.items():
            began = time.perf_counter()
            encode_batch(batch)
            seconds[name] += time.perf_counter() - began
        done_bytes += sum(len(t.encode("utf-8")) for t in batch)
        calls += 1
    return {name: {"mb_per_s": round(done_bytes / s / 1e6, 3), "ms_per_call": round(1000 * s / calls, 3),
                   "calls": calls} for name, s in seconds.items()}


def start_server(tokenizer_dir: Path, max_batch_size: int, num_threads: int) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "dbrx_serve.services.tokenizer.server", "--tokenizer_dir", str(tokenizer_dir),
               "--port", "0", "--max_batch_size", str(max_batch_size), "--num_threads", str(num_threads)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    match = re.search(r"listening on (\S+)", process.stdout.readline())
    if match is None:
        process.kill()
        raise SystemExit("the tokenizer server did not start; run the command by hand: " + " ".join(command))
    return process, match.group(1)


def service_encoder(stub):
    def encode_batch(batch):
        response = stub.Encode(pb.EncodeRequest(texts=batch))
        return [list(result.ids) for result in response.results]
    return encode_batch


def measure(args, tokenizer_dir: Path, texts: list[str]) -> dict:
    """Per batch size: tiktoken on one thread, our library in-process, and the service."""
    tokenizer = load_tokenizer(tokenizer_dir, num_threads=args.num_threads)
    process, target = start_server(tokenizer_dir, max(args.batch_sizes), args.num_threads)
    try:
        with grpc.insecure_channel(target) as channel:
            modes = {"tiktoken_one_thread": lambda b: [tokenizer.encoding.encode_ordinary(t) for t in b],
                     "in_process": tokenizer.encode,
                     "service": service_encoder(pb_grpc.TokenizerServiceStub(channel))}
            return {n: compare(modes, texts, n, args.min_seconds) for n in args.batch_sizes}
    finally:
        process.terminate()
        process.wait(timeout=30)


def summary(args, texts: list[str], tokenizer_threads: int, results: dict) -> dict:
    rows = {}
    for n, modes in results.items():
        service = modes["service"]["mb_per_s"]
        rows[str(n)] = {**modes,
                        "ratio_service_over_in_process": round(service / modes["in_process"]["mb_per_s"], 3),
                        "ratio_service_over_tiktoken_one_thread":
                            round(service / modes["tiktoken_one_thread"]["mb_per_s"], 3)}
    return {"bench": "tokenizer_encode", "texts": len(texts),
            "mean_text_bytes": round(sum(len(t.encode()) for t in texts) / len(texts)),
            "cpus": os.cpu_count(), "encode_threads": tokenizer_threads, "batch_sizes": rows}


def main() -> None:
    args = parse_args()
    tokenizer_dir = Path(args.tokenizer_dir) if args.tokenizer_dir else default_tokenizer_dir()
    texts = load_texts(args.dataset, args.text_bytes, args.num_texts)
    threads = args.num_threads or os.cpu_count()
    print(json.dumps(summary(args, texts, threads, measure(args, tokenizer_dir, texts)), indent=2))


if __name__ == "__main__":
    main()
