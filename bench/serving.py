"""Serving under load, reported as vLLM's serving benchmark reports it: N
concurrent GenerateStream clients, over gRPC and through the OpenAI gateway,
with every stream checked token by token against the same prompt run alone.

    python bench/serving.py [--levels 1 16 64 256] [--num_distinct 256] [--input_len 4 64]
                            [--output_len 8 64] [--requests_per_client 2] [--min_requests 16]
                            [--poisson_load 0.8] [--engine_dir E] [--device cpu] [--max_batch_size 256]
    python bench/serving.py --target HOST:PORT [--metrics_url URL] [--gateway_url URL] ...

Without --target or --gateway_url it makes the demo's tiny DBRX (float32),
starts `dbrx serve inference` on it (--metrics_port 0) and `dbrx serve openai`
over that, as real processes on localhost. With them it runs against those
servers unchanged (a GPU server, say): --target is the gRPC path,
--gateway_url the gateway path; --metrics_url (the inference server's
/metrics) adds the KV-pool check.

The workload: --num_distinct prompts of random token ids, each with its own
prompt length and max_new_tokens drawn from --input_len and --output_len;
greedy, the model's own stop ids, each token's logprob returned (through the
gateway: `logprobs: 0` and `return_tokens_as_token_ids`, so the client sees
ids). Each distinct prompt is first run alone (on the first path). Then for
each level N, max(--min_requests, N x --requests_per_client) requests drawn
from the prompts, on each path in turn (so that both meet the same load from
elsewhere on a shared machine), in two modes: `concurrency` (N streams in
flight at all times) and `poisson` (arrivals at --poisson_load times the
request rate the concurrency mode reached, at most N in flight).

Reported per path, level and mode (vLLM's names): completed and failed
requests, request, output-token and total-token throughput, and mean / p50 /
p99 of time to first token (TTFT: from sending to the first token), time per
output token (TPOT: (E2EL - TTFT) / (tokens - 1), per request), inter-token
latency (ITL: the gap before each later message with tokens) and end-to-end
latency (E2EL: from sending to the answer's end), in ms. Then the checks:

- every completed stream against its prompt's lone run: `identical`, or
  `near_tie` when it forks from it where a near-tie let float32 arithmetic
  decide (a batch sums in another order than a lone run: see
  tests/services/inference/helpers.py): a near-tie of the greedy token (the
  two tokens' logprobs within --tie) or of a choice inside the model (the
  router's experts: the logits then move by more), the latter seen in that
  the next token is the one a lone run of the stream's own tokens gives; and
  from the fork on the stream must be exactly what a lone run of the prompt
  plus its tokens so far gives. Anything else is `mismatched` (a token lost,
  duplicated, reordered or wrong), as is a stream whose token count is not
  the count the server put in its usage;
- the KV pool: with the inference server's metrics, no request running or
  waiting and no KV block used once the level has ended;
- the servers still answer health checks as serving.

Prints one JSON object, last.
"""

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import httpx
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from dbrx_serve.cli.launcher import Launcher
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2 as pb
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2_grpc as pb_grpc

NUM_BPE_IDS = 100256  # cl100k's ordinary tokens: DBRX's prompt ids are drawn from these
TIE = 5e-3  # a logprob gap float32 cannot resolve (tests/services/inference/helpers.py measures the noise)
MAX_TIES = 4  # near-ties one stream may meet before it counts as mismatched
WAIT = 120.0  # seconds a server gets to start, and a finished level's KV pool to drain
MODES = ("concurrency", "poisson")


# --- the workload ---

@dataclass(frozen=True)
class Prompt:
    ids: tuple[int, ...]
    max_new_tokens: int


def make_prompts(count: int, input_len: tuple[int, int], output_len: tuple[int, int], seed: int) -> list[Prompt]:
    rng = random.Random(seed)
    return [Prompt(tuple(rng.randrange(NUM_BPE_IDS) for _ in range(rng.randint(*input_len))),
                   rng.randint(*output_len)) for _ in range(count)]


def requests_of(prompts: list[Prompt], count: int, seed: int) -> list[Prompt]:
    """`count` requests: the prompts shuffled, over and over."""
    rng, order = random.Random(seed), []
    while len(order) < count:
        order += rng.sample(prompts, len(prompts))
    return order[:count]


# --- one stream, as the client saw it ---

@dataclass
class Record:
    sent: float
    arrivals: list[float] = field(default_factory=list)  # when each message with tokens came
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    num_counted: int | None = None  # the completion tokens the server's usage counted
    ended: float | None = None  # when the answer ended (its last message read)
    error: str | None = None

    def add(self, ids, logprobs) -> None:
        if ids:
            self.arrivals.append(time.perf_counter())
            self.token_ids += ids
            self.logprobs += logprobs

    @property
    def ttft(self) -> float:
        return self.arrivals[0] - self.sent

    @property
    def e2e(self) -> float:
        return self.ended - self.sent


class GrpcPath:
    """GenerateStream on one grpc.aio channel (HTTP/2 streams over one connection)."""

    name = "grpc"

    def __init__(self, address: str, auth_token: str | None):
        self.address = address
        self.metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = pb_grpc.InferenceServiceStub(self.channel)

    async def stream(self, prompt: Prompt) -> Record:
        record = Record(time.perf_counter())
        sampling = pb.SamplingParams(max_new_tokens=prompt.max_new_tokens, temperature=0, return_logprobs=True)
        try:
            async for message in self.stub.GenerateStream(pb.GenerateRequest(input_ids=prompt.ids, sampling=sampling),
                                                          metadata=self.metadata):
                record.add(list(message.token_ids), list(message.logprobs))
                if message.HasField("usage"):
                    record.num_counted = message.usage.completion_tokens
            record.ended = time.perf_counter()
        except grpc.aio.AioRpcError as error:
            record.error = f"{error.code().name}: {error.details()}"
        return record

    async def serving(self) -> bool:
        check = health_pb2_grpc.HealthStub(self.channel).Check
        try:
            reply = await check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        await self.channel.close()


class GatewayPath:
    """POST /v1/completions with `stream: true` on a bare HTTP/1.1 connection per stream (no HTTP
    library: the client adds little of its own), its chunked body read as SSE events."""

    name = "gateway"

    def __init__(self, url: str, api_key: str | None):
        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.headers = (f"Host: {parts.netloc}\r\nContent-Type: application/json\r\nConnection: close\r\n"
                        + (f"Authorization: Bearer {api_key}\r\n" if api_key else ""))

    def request(self, prompt: Prompt) -> bytes:
        body = json.dumps({"prompt": list(prompt.ids), "max_tokens": prompt.max_new_tokens, "temperature": 0,
                           "logprobs": 0, "return_tokens_as_token_ids": True, "stream": True,
                           "stream_options": {"include_usage": True}}).encode()
        head = f"POST /v1/completions HTTP/1.1\r\n{self.headers}Content-Length: {len(body)}\r\n\r\n"
        return head.encode() + body

    async def stream(self, prompt: Prompt) -> Record:
        record = Record(time.perf_counter())
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as error:
            record.error = f"connect: {error}"
            return record
        try:
            writer.write(self.request(prompt))
            await read_answer(reader, record)
        except (OSError, ValueError, asyncio.IncompleteReadError) as error:
            record.error = f"{type(error).__name__}: {error}"
        finally:
            writer.close()
        return record

    async def serving(self) -> bool:
        async with httpx.AsyncClient() as client:
            try:
                return (await client.get(f"{self.url}/health", timeout=10)).status_code == 200
            except httpx.HTTPError:
                return False

    async def close(self) -> None:
        pass


async def read_answer(reader: asyncio.StreamReader, record: Record) -> None:
    status = await reader.readline()
    headers = await read_headers(reader)
    if b" 200 " not in status:
        record.error = f"{status.decode().strip()}: {(await reader.read()).decode(errors='replace')[:300]}"
        return
    if headers.get("transfer-encoding") != "chunked":
        raise ValueError(f"expected a chunked event stream, got headers {headers}")
    async for event in sse_events(reader):
        take_event(event, record)
    record.ended = time.perf_counter()


async def read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    return headers


async def sse_events(reader: asyncio.StreamReader):
    """Each `data:` payload of a chunked SSE body, parsed, until [DONE]."""
    buffer = b""
    while size := int((await reader.readline()).strip(), 16):
        buffer += (await reader.readexactly(size + 2))[:-2]  # the chunk, then its CRLF
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            data = event.removeprefix(b"data: ")
            if data == b"[DONE]":
                return
            yield json.loads(data)
    raise ValueError("the event stream ended without data: [DONE]")


def take_event(event: dict, record: Record) -> None:
    if "error" in event:
        record.error = f"{event['error'].get('type')}: {event['error'].get('message')}"
        return
    for choice in event["choices"]:
        if choice["logprobs"]:
            tokens = choice["logprobs"]["tokens"]
            record.add([int(t.removeprefix("token_id:")) for t in tokens], choice["logprobs"]["token_logprobs"])
    if event.get("usage"):
        record.num_counted = event["usage"]["completion_tokens"]


# --- a level: N clients, in one mode ---

async def run_level(path, requests: list[Prompt], concurrency: int, rate: float | None,
                    seed: int) -> tuple[list[tuple[Prompt, Record]], float]:
    """Every request on `path`, at most `concurrency` in flight; with `rate`, arriving as a Poisson
    process of that many requests a second. Returns (prompt, record) pairs and the seconds taken."""
    slots, rng, tasks = asyncio.Semaphore(concurrency), random.Random(seed), []

    async def one(prompt: Prompt) -> tuple[Prompt, Record]:
        async with slots:
            return prompt, await path.stream(prompt)
    started = time.perf_counter()
    for prompt in requests:
        tasks.append(asyncio.create_task(one(prompt)))
        if rate is not None:
            await asyncio.sleep(rng.expovariate(rate))
    results = await asyncio.gather(*tasks)
    return results, time.perf_counter() - started


def latency_ms(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "p50": None, "p99": None}
    ms = np.asarray(values) * 1e3
    return {"mean": round(float(ms.mean()), 2), "p50": round(float(np.percentile(ms, 50)), 2),
            "p99": round(float(np.percentile(ms, 99)), 2)}


def summary(results: list[tuple[Prompt, Record]], seconds: float) -> dict:
    done = [(p, r) for p, r in results if r.error is None]
    records = [r for _, r in done if r.token_ids]  # a greedy answer may end at once on a stop id
    num_input, num_output = sum(len(p.ids) for p, _ in done), sum(len(r.token_ids) for r in records)
    return {
        "requests": len(results), "completed": len(done), "failed": len(results) - len(done),
        "errors": sorted({r.error for _, r in results if r.error})[:5],
        "seconds": round(seconds, 3), "input_tokens": num_input, "output_tokens": num_output,
        "request_throughput": round(len(done) / seconds, 3),
        "output_token_throughput": round(num_output / seconds, 1),
        "total_token_throughput": round((num_input + num_output) / seconds, 1),
        "ttft_ms": latency_ms([r.ttft for r in records]),
        "tpot_ms": latency_ms([(r.e2e - r.ttft) / (len(r.token_ids) - 1) for r in records if len(r.token_ids) > 1]),
        "itl_ms": latency_ms([b - a for r in records for a, b in zip(r.arrivals, r.arrivals[1:])]),
        "e2el_ms": latency_ms([r.e2e for r in records]),
    }


# --- checking every stream against its prompt run alone ---

class LoneRuns:
    """Each prompt's tokens when it runs alone on `path` (asked once, kept)."""

    def __init__(self, path):
        self.path, self.runs = path, {}

    async def __call__(self, prompt: Prompt) -> Record:
        if prompt not in self.runs:
            record = await self.path.stream(prompt)
            if record.error is not None:
                raise RuntimeError(f"a lone run failed: {record.error}")
            self.runs[prompt] = record
        return self.runs[prompt]


def parting(got: list[int], want: list[int]) -> int | None:
    """The first position where two id lists differ (one ending first counts), or None."""
    if got == want:
        return None
    return next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))


def continued(prompt: Prompt, tokens: list[int]) -> Prompt:
    """The prompt followed by the first tokens of its answer, asking for the rest."""
    return Prompt(prompt.ids + tuple(tokens), prompt.max_new_tokens - len(tokens))


async def verdict(prompt: Prompt, record: Record, lone, tie: float = TIE) -> tuple[str, str]:
    """('identical' | 'near_tie' | 'mismatched', why) for one completed stream; `lone(prompt)` is
    the record of that prompt run alone."""
    got, start, ties = record.token_ids, 0, 0
    if record.num_counted is not None and record.num_counted != len(got):
        return "mismatched", f"the server counted {record.num_counted} tokens, the stream carried {len(got)}"
    while (k := parting(got[start:], (want := await lone(continued(prompt, got[:start]))).token_ids)) is not None:
        at = start + k
        if k == min(len(got) - start, len(want.token_ids)):
            return "mismatched", f"{len(got)} tokens where a lone run gives {start + len(want.token_ids)}"
        if ties == MAX_TIES or not await forks(prompt, record, at, want.logprobs[k], lone, tie):
            return "mismatched", (f"token {at} is {got[at]} where a lone run gives {want.token_ids[k]} "
                                  f"(logprobs {record.logprobs[at]:.5f} and {want.logprobs[k]:.5f})")
        ties, start = ties + 1, at + 1
        if start == prompt.max_new_tokens:
            break
    return ("near_tie" if ties else "identical"), ""


async def forks(prompt: Prompt, record: Record, at: int, lone_logprob: float, lone, tie: float) -> bool:
    """Whether token `at`, where the stream parts from a lone run, can be a near-tie decided by
    arithmetic: its logprob within `tie` of the lone run's, or the next token the one a lone run of
    the stream's own tokens gives (a lost, duplicated or reordered token fails both)."""
    if abs(record.logprobs[at] - lone_logprob) <= tie:
        return True
    if at + 1 == len(record.token_ids):
        return False
    after = await lone(continued(prompt, record.token_ids[:at + 1]))
    return after.token_ids[:1] == record.token_ids[at + 1:at + 2]


async def checked(results: list[tuple[Prompt, Record]], lone, tie: float) -> dict:
    """How many completed streams are identical to their lone runs, part at near-ties, or mismatch."""
    counts, mismatches = {"identical": 0, "near_tie": 0, "mismatched": 0}, []
    for i, (prompt, record) in enumerate(results):
        if record.error is None:
            kind, why = await verdict(prompt, record, lone, tie)
            counts[kind] += 1
            if kind == "mismatched" and len(mismatches) < 5:
                mismatches.append(f"request {i}: {why}")
    return {**counts, "mismatches": mismatches}


# --- the inference server's KV pool, from its metrics ---

POOL = ("num_requests_running", "num_requests_waiting", "kv_blocks_used", "kv_blocks_free")


def pool_state(metrics_url: str) -> dict:
    """The pool gauges (None where a scrape skipped them: the engine was busy past its timeout)."""
    text = httpx.get(metrics_url, timeout=10).text
    values = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    return {name: None if f"dbrx:{name}" not in values else int(values[f"dbrx:{name}"]) for name in POOL}


def idle(state: dict) -> bool:
    return all(state[name] == 0 for name in ("num_requests_running", "num_requests_waiting", "kv_blocks_used"))


async def drained_pool(metrics_url: str | None) -> dict | None:
    """The pool once no request runs or waits (the last aborts land between steps), or as it is
    after WAIT seconds; with `empty`."""
    if metrics_url is None:
        return None
    deadline = time.monotonic() + WAIT
    while not idle(state := await asyncio.to_thread(pool_state, metrics_url)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return {**state, "empty": idle(state)}


# --- the whole run ---

@dataclass(frozen=True)
class Targets:
    grpc: str | None  # the inference server, HOST:PORT
    gateway: str | None  # the gateway's base URL
    metrics: str | None  # the inference server's /metrics URL


async def until_serving(path) -> None:
    deadline = time.monotonic() + WAIT
    while not await path.serving():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {path.name} path did not serve within {WAIT:.0f} s")
        await asyncio.sleep(0.1)


async def measure_level(path, requests: list[Prompt], n: int, lone, metrics: str | None, args) -> dict:
    """One level on one path in each mode, each checked as it ends."""
    reports, rate = {}, None
    for mode in MODES:
        results, seconds = await run_level(path, requests, n, rate, args.seed)
        report = {"request_rate": rate and round(rate, 3), **summary(results, seconds)}
        report["kv_pool"] = await drained_pool(metrics)
        report["serving_after"] = await path.serving()
        report["streams"] = await checked(results, lone, args.tie)
        reports[mode], rate = report, args.poisson_load * report["request_throughput"]
        log(path.name, n, mode, report)
    return reports


def log(path: str, n: int, mode: str, r: dict) -> None:
    s = r["streams"]
    print(f"{path} N={n} {mode}: {r['completed']}/{r['requests']} completed, {r['output_token_throughput']} tok/s, "
          f"TTFT p50 {r['ttft_ms']['p50']} ms, TPOT p50 {r['tpot_ms']['p50']} ms; streams {s['identical']} identical, "
          f"{s['near_tie']} near-tie, {s['mismatched']} mismatched; pool {r['kv_pool']}", file=sys.stderr, flush=True)


def paths_of(targets: Targets, args) -> list:
    return ([GrpcPath(targets.grpc, args.auth_token)] if targets.grpc else []) + \
           ([GatewayPath(targets.gateway, args.api_key)] if targets.gateway else [])


async def bench(targets: Targets, args) -> dict:
    paths = paths_of(targets, args)
    prompts = make_prompts(args.num_distinct, tuple(args.input_len), tuple(args.output_len), args.seed)
    try:
        for path in paths:
            await until_serving(path)
        lone = LoneRuns(paths[0])
        for prompt in prompts:
            await lone(prompt)
        for path in paths:
            await path.stream(prompts[0])  # a warm-up: connections, first-call costs
        results = {path.name: {} for path in paths}
        for n in args.levels:  # the paths take turns at each level, so both meet the same load around them
            requests = requests_of(prompts, max(args.min_requests, n * args.requests_per_client), args.seed + n)
            for path in paths:
                results[path.name][str(n)] = await measure_level(path, requests, n, lone, targets.metrics, args)
    finally:
        for path in paths:
            await path.close()
    return {"lone_runs_on": paths[0].name, "paths": results, "totals": totals(results)}


def totals(results: dict) -> dict:
    reports = [r for levels in results.values() for modes in levels.values() for r in modes.values()]
    return {"failed": sum(r["failed"] for r in reports),
            "mismatched": sum(r["streams"]["mismatched"] for r in reports),
            "near_tie": sum(r["streams"]["near_tie"] for r in reports),
            "kv_pool_empty": None if reports[0]["kv_pool"] is None else all(r["kv_pool"]["empty"] for r in reports),
            "serving_after": all(r["serving_after"] for r in reports)}


def make_engine(root: Path, max_batch_size: int) -> Path:
    """The demo's tiny DBRX (float32), converted and built here."""
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


def own_servers(launcher: Launcher, root: Path, args) -> Targets:
    """`dbrx serve inference` (with its metrics) and `dbrx serve openai` over it, on free ports."""
    engine_dir = args.engine_dir or make_engine(root, args.max_batch_size)
    inference = launcher.start("inference", "serve", "inference", "--engine_dir", engine_dir, "--port", 0,
                               "--device", args.device, "--metrics_port", 0)
    gateway = launcher.start("gateway", "serve", "openai", "--inference", inference.address, "--port", 0)
    return Targets(inference.address, f"http://{gateway.address}", inference.metrics)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", help="an inference server's gRPC HOST:PORT (default: one started here)")
    p.add_argument("--gateway_url", help="an OpenAI gateway's base URL (default: one started here)")
    p.add_argument("--metrics_url", help="the inference server's /metrics, for the KV-pool check")
    p.add_argument("--auth_token", help="the inference server's --auth_token")
    p.add_argument("--api_key", help="the gateway's --api_key")
    p.add_argument("--engine_dir", help="the engine a server started here serves (default: the tiny DBRX)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max_batch_size", type=int, default=256, help="the tiny engine's build limit")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64, 256], help="concurrent streams")
    p.add_argument("--num_distinct", type=int, default=256, help="distinct prompts, each run alone first")
    p.add_argument("--input_len", type=int, nargs=2, default=[4, 64], metavar=("MIN", "MAX"))
    p.add_argument("--output_len", type=int, nargs=2, default=[8, 64], metavar=("MIN", "MAX"))
    p.add_argument("--requests_per_client", type=int, default=2)
    p.add_argument("--min_requests", type=int, default=16, help="requests per level and mode, at least")
    p.add_argument("--poisson_load", type=float, default=0.8,
                   help="Poisson arrivals at this fraction of the request rate the concurrency mode reached")
    p.add_argument("--tie", type=float, default=TIE, help="the logprob gap of a near-tie: float32's noise (a bf16 engine needs more)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp, Launcher(quiet=True) as launcher:
        started_here = not (args.target or args.gateway_url)
        targets = (own_servers(launcher, Path(tmp), args) if started_here else
                   Targets(args.target, args.gateway_url, args.metrics_url))
        result = asyncio.run(bench(targets, args))
        alive = launcher.dead() is None if started_here else None
    workload = {name: getattr(args, name) for name in ("levels", "num_distinct", "input_len", "output_len",
                                                       "requests_per_client", "min_requests", "poisson_load", "seed")}
    servers = ({"engine": args.engine_dir or "demo tiny DBRX, float32", "device": args.device, "alive_after": alive}
               if started_here else {"target": args.target, "gateway_url": args.gateway_url})
    print(json.dumps({"servers": servers, "workload": workload, **result}))


if __name__ == "__main__":
    main()
