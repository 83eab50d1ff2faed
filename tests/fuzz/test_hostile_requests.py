"""Every RPC of every server under hostile requests (tests/fuzz/requests.py: extreme and unknown
values, huge strings and lists, garbage bytes), sent as raw bytes over a real channel: each call
ends OK or with a status that says the request was refused (INVALID_ARGUMENT, NOT_FOUND,
FAILED_PRECONDITION, RESOURCE_EXHAUSTED, UNAUTHENTICATED), within CALL_SECONDS (longer is a
hang), never UNKNOWN, INTERNAL or UNAVAILABLE; the server still reports SERVING after.

EXAMPLES per RPC (1,000 in CI; DBRX_FUZZ_EXAMPLES sets another count). The examples are the
same every run (hypothesis derandomized) unless DBRX_FUZZ_RANDOM=1, for searching further.

Hypothesis making the requests costs more than the servers answering them, so the RPCs are fuzzed
WORKERS at a time, each in a worker process (CI has two cores), against the servers this process
runs (tests/fuzz/conftest.py); each test waits for its RPC's outcome. Under pytest-xdist the module's
tests stay in one process (.ci/run's --dist loadfile): the fixture starts every one of them."""

import multiprocessing
import os
import time
from collections import Counter

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from google.protobuf import descriptor_pool
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, Phase, given, settings

from dbrx_serve.shared.generated.dbrx.serve.v1 import builder_pb2, converter_pb2, inference_pb2, jobs_pb2, tokenizer_pb2

from .requests import request_bytes

EXAMPLES = int(os.environ.get("DBRX_FUZZ_EXAMPLES", 1000))
WORKERS = 2
CALL_SECONDS = 30.0
RUN_SECONDS = 1200  # one RPC's whole fuzz run: far past CI's (under a minute), short of a hung CI job
REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
           grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED}
SERVERS = {"tokenizer": [tokenizer_pb2], "converter": [converter_pb2, jobs_pb2], "builder": [builder_pb2],
           "inference": [inference_pb2]}  # JobService once: the builder's is the same code on the same store
RPCS = [(server, method) for server, modules in SERVERS.items() for module in modules
        for service in module.DESCRIPTOR.services_by_name.values() for method in service.methods]
NO_LIMIT = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def valid_request(method, job_id: str):
    """A request `method` accepts (and that costs little: a token is ~8 ms of the tiny model, and a
    quarter of Generate's examples run it; a stream still has two messages): hostile ones are it
    with fields changed."""
    fields = {"Encode": dict(texts=["Hello world"]), "Decode": dict(sequences=[tokenizer_pb2.TokenIds(ids=[9906, 1917])]),
              "ApplyChatTemplate": dict(messages=[tokenizer_pb2.ChatMessage(role="user", content="Hi")],
                                        add_generation_prompt=True),
              "SubmitConvert": dict(model_dir="/tmp/dbrx-fuzz/model", output_dir="/tmp/dbrx-fuzz/checkpoint"),
              "SubmitBuild": dict(checkpoint_dir="/tmp/dbrx-fuzz/checkpoint", output_dir="/tmp/dbrx-fuzz/engine"),
              "GetJob": dict(id=job_id), "CancelJob": dict(id=job_id), "WatchJob": dict(id=job_id),
              "ListJobs": dict(limit=5),
              "Generate": dict(text="Hello world", sampling=inference_pb2.SamplingParams(max_new_tokens=1)),
              "GenerateStream": dict(input_ids=[9906, 1917], sampling=inference_pb2.SamplingParams(max_new_tokens=2))}
    return GetMessageClass(method.input_type)(**fields.get(method.name, {}))


def caller(channel: grpc.Channel, method):
    """Send raw bytes to `method`; its status code (a stream is read to its end)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    if method.server_streaming:
        stream = channel.unary_stream(path)
        send = lambda data: list(stream(data, timeout=CALL_SECONDS))  # noqa: E731
    else:
        unary = channel.unary_unary(path)
        send = lambda data: unary(data, timeout=CALL_SECONDS)  # noqa: E731

    def status(data: bytes) -> grpc.StatusCode:
        try:
            send(data)
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK
    return status


def fuzz(call, method, job_id: str) -> Counter:
    outcomes = Counter()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not os.environ.get("DBRX_FUZZ_RANDOM"),
              suppress_health_check=list(HealthCheck), phases=(Phase.explicit, Phase.generate, Phase.shrink))
    @given(request_bytes(method.input_type, (job_id,), valid_request(method, job_id)))
    def one(data: bytes):
        started = time.monotonic()
        code = call(data)
        outcomes[code.name] += 1
        assert code == grpc.StatusCode.OK or code in REFUSED, (
            f"{method.full_name} answered {code.name} after {time.monotonic() - started:.1f} s to {len(data)} bytes")
    one()
    return outcomes


def fuzzed(address: str, method_name: str, job_id: str) -> tuple[Counter, int]:
    """In a worker process: the method fuzzed over a channel of its own, then the server's health."""
    method = descriptor_pool.Default().FindMethodByName(method_name)
    with grpc.insecure_channel(address, NO_LIMIT) as channel:
        outcomes = fuzz(caller(channel, method), method, job_id)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=CALL_SECONDS)
    return outcomes, health.status


@pytest.fixture(scope="module")
def fuzzing(request, targets):
    """The selected RPCs' fuzz runs, all started at once: method full name -> result of `fuzzed`.
    A run still going at the end (its test failed or timed out) is killed with its worker."""
    selected = [item.callspec.params for item in request.session.items if item.parent is request.node]
    spawn = multiprocessing.get_context("spawn")  # never fork a process that runs gRPC servers in threads
    with spawn.Pool(WORKERS) as pool:
        yield {params["method"].full_name: pool.apply_async(fuzzed, (targets.addresses[params["server"]],
                                                                     params["method"].full_name, targets.job_id))
               for params in selected}


@pytest.mark.parametrize("server,method", RPCS, ids=[f"{s}-{m.name}" for s, m in RPCS])
def test_every_rpc_answers_hostile_requests_without_crash_or_hang(server, method, fuzzing):
    outcomes, health = fuzzing[method.full_name].get(timeout=RUN_SECONDS)
    print(f"{method.full_name}: {sum(outcomes.values())} requests: {dict(outcomes)}")
    assert sum(outcomes.values()) >= EXAMPLES
    assert health == health_pb2.HealthCheckResponse.SERVING
