"""TokenizerService on a real gRPC server on localhost: the four RPCs, health,
reflection, and INVALID_ARGUMENT for bad input."""

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from dbrx_serve.services.tokenizer.config import TokenizerServiceConfig
from dbrx_serve.services.tokenizer.server import SERVICE_NAME, build_server
from dbrx_serve.shared import rpc
from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.generated.dbrx.serve.v1 import tokenizer_pb2 as pb
from dbrx_serve.shared.generated.dbrx.serve.v1 import tokenizer_pb2_grpc as pb_grpc

MAX_BATCH_SIZE = 8
MAX_TEXT_LENGTH = 100
MAX_CHAT_MESSAGES = 16
WAIT = 120  # seconds a hostile call may take before the test calls it a hang
HEALTH_WAIT = 5  # a server that answers health later than this is stalled


class ServerThread:
    """A grpc.aio server on its own event loop in a thread, so sync tests can call it."""

    def __init__(self, config: TokenizerServiceConfig):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server, self.port = self.call(self.build(config))

    async def build(self, config):
        server, port = build_server(config)
        await rpc.start(server)
        return server, port

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self):
        self.call(self.server.stop(None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


@pytest.fixture(scope="module")
def channel(cl100k_dir):
    server = ServerThread(TokenizerServiceConfig(str(cl100k_dir), max_batch_size=MAX_BATCH_SIZE,
                                                 max_text_length=MAX_TEXT_LENGTH,
                                                 max_chat_messages=MAX_CHAT_MESSAGES))
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel
    server.stop()


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.TokenizerServiceStub(channel)


def invalid_argument(call, request) -> str:
    with pytest.raises(grpc.RpcError) as error:
        call(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return error.value.details()


def test_encode_batch(stub, tok):
    texts = ["Hello world", "Say <|im_end|> now", "你好，世界！", ""]
    response = stub.Encode(pb.EncodeRequest(texts=texts))
    assert [list(r.ids) for r in response.results] == tok.encode(texts)
    special = stub.Encode(pb.EncodeRequest(texts=["Say <|im_end|> now"], allow_special_tokens=True))
    assert list(special.results[0].ids) == [46864, 220, 100279, 1457]


def test_decode_batch(stub):
    sequences = [pb.TokenIds(ids=[9906, 100279, 1917]), pb.TokenIds(ids=[40, 3021, 11410, 99, 247]),
                 pb.TokenIds(ids=[100300])]
    assert list(stub.Decode(pb.DecodeRequest(sequences=sequences)).texts) == ["Hello<|im_end|> world",
                                                                               "I love 🦙", ""]
    skipped = stub.Decode(pb.DecodeRequest(sequences=sequences[:1], skip_special_tokens=True))
    assert list(skipped.texts) == ["Hello world"]


def test_apply_chat_template(stub):
    messages = [pb.ChatMessage(role="system", content="You are helpful."), pb.ChatMessage(role="user", content="Hello")]
    response = stub.ApplyChatTemplate(pb.ApplyChatTemplateRequest(messages=messages, add_generation_prompt=True))
    assert list(response.results[0].ids) == [100278, 9125, 198, 2675, 527, 11190, 13, 100279, 198, 100278, 882,
                                             198, 9906, 100279, 198, 100278, 78191, 198]
    default = stub.ApplyChatTemplate(pb.ApplyChatTemplateRequest(messages=messages[1:], add_generation_prompt=True))
    assert len(default.results[0].ids) == 186


def test_tokenizer_info(stub, cl100k_dir):
    info = stub.GetTokenizerInfo(pb.GetTokenizerInfoRequest())
    assert (info.vocab_size, info.eos_id, info.bos_id, info.pad_id) == (100280, 100257, 100257, 100277)
    assert {t.text: t.id for t in info.special_tokens}["<|im_end|>"] == 100279
    assert len(info.special_tokens) == 8
    assert info.model_vocab_size == 100352 and list(info.stop_ids) == [100257]
    assert info.source == str(cl100k_dir / "cl100k_base.tiktoken")


def test_empty_batches_are_invalid(stub):
    assert "the batch is empty" in invalid_argument(stub.Encode, pb.EncodeRequest())
    assert "the batch is empty" in invalid_argument(stub.Decode, pb.DecodeRequest())


def test_batches_over_the_limit_are_invalid(stub):
    details = invalid_argument(stub.Encode, pb.EncodeRequest(texts=["a"] * (MAX_BATCH_SIZE + 1)))
    assert f"9 texts, over this server's max_batch_size {MAX_BATCH_SIZE}" in details
    sequences = [pb.TokenIds(ids=[1])] * (MAX_BATCH_SIZE + 1)
    assert "max_batch_size" in invalid_argument(stub.Decode, pb.DecodeRequest(sequences=sequences))


def test_ids_outside_the_vocabulary_are_invalid(stub):
    request = pb.DecodeRequest(sequences=[pb.TokenIds(ids=[1]), pb.TokenIds(ids=[5, 100352])])
    details = invalid_argument(stub.Decode, request)
    assert details == "sequence 1: id 100352 at position 1 is outside the vocabulary 0..100351"


@pytest.mark.parametrize("method, body", [
    ("Encode", b"\x0a\x03a\xff\xfe"),                                    # texts[0] = b"a\xff\xfe"
    ("ApplyChatTemplate", b"\x0a\x0a\x0a\x04user\x12\x02\xc3\x28"),        # messages[0].content = b"\xc3("
])
def test_invalid_utf8_is_invalid_argument(channel, method, body):
    """Raw bytes, since a Python client cannot put invalid UTF-8 in a string field."""
    call = channel.unary_unary(f"/{SERVICE_NAME}/{method}")
    assert "strings must be valid UTF-8" in invalid_argument(call, body)


def test_chat_without_turns_is_invalid(stub):
    request = pb.ApplyChatTemplateRequest(messages=[pb.ChatMessage(role="system", content="x")])
    assert "no turns" in invalid_argument(stub.ApplyChatTemplate, request)


def test_texts_and_chat_messages_over_the_length_bound_are_invalid(stub):
    long = "a" * (MAX_TEXT_LENGTH + 1)
    details = invalid_argument(stub.Encode, pb.EncodeRequest(texts=["ok", long]))
    assert details == f"text 1 has {MAX_TEXT_LENGTH + 1} characters, over this server's max_text_length " \
                      f"{MAX_TEXT_LENGTH}: split it"
    messages = [pb.ChatMessage(role="user", content="hi"), pb.ChatMessage(role="user", content=long[4:])]
    details = invalid_argument(stub.ApplyChatTemplate, pb.ApplyChatTemplateRequest(messages=messages))
    assert details.startswith(f"chat message 1 has {MAX_TEXT_LENGTH + 1} characters, over this server's")
    stub.Encode(pb.EncodeRequest(texts=["a" * MAX_TEXT_LENGTH]))


def test_a_chat_of_millions_of_turns_is_refused_and_never_stalls_the_server(channel):
    """2 million empty turns (4 MB): refused by the bound on chat messages, not templated for seconds."""
    body = b"\x0a\x00" * 2_000_000  # messages: 2,000,000 empty ChatMessage
    call = channel.unary_unary(f"/{SERVICE_NAME}/ApplyChatTemplate").future(body, timeout=WAIT)
    health = health_pb2_grpc.HealthStub(channel)
    while True:  # raises DEADLINE_EXCEEDED if the hostile call holds the server's event loop
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_WAIT).status == \
            health_pb2.HealthCheckResponse.SERVING
        if call.done():
            break
    assert call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert call.details() == (f"the chat has 2000000 messages, over this server's max_chat_messages "
                              f"{MAX_CHAT_MESSAGES}: shorten it")


def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME)).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert SERVICE_NAME in names


def test_config_is_validated(cl100k_dir):
    with pytest.raises(InvalidInput, match="max_batch_size must be a positive integer"):
        TokenizerServiceConfig(str(cl100k_dir), max_batch_size=0)
    with pytest.raises(InvalidInput, match="--tokenizer_dir is required"):
        TokenizerServiceConfig("")
    with pytest.raises(InvalidInput, match="max_text_length must be a positive integer"):
        TokenizerServiceConfig(str(cl100k_dir), max_text_length=0)
    with pytest.raises(InvalidInput, match="max_chat_messages must be a positive integer"):
        TokenizerServiceConfig(str(cl100k_dir), max_chat_messages=-1)


def test_serve_command_starts_and_drains(tiny_dir):
    """The `dbrx serve tokenizer` entry as a process: it prints its address, serves, and exits 0 on SIGTERM."""
    command = [sys.executable, "-m", "dbrx_serve.services.tokenizer.server", "--tokenizer_dir", str(tiny_dir),
               "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        port = int(re.search(r"listening on .*:(\d+)", process.stdout.readline()).group(1))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            ids = pb_grpc.TokenizerServiceStub(channel).Encode(pb.EncodeRequest(texts=["<|im_end|>"],
                                                                                 allow_special_tokens=True))
            assert list(ids.results[0].ids) == [100279]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
