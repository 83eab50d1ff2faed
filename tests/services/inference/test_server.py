"""InferenceService over a real grpc.aio server on localhost: Generate and the
concatenated GenerateStream equal the engine's own tokens and text; 64
concurrent streams each equal their lone run; chat messages give the ids of
the tokenizer service's ApplyChatTemplate; GetModelInfo describes the engine."""

import asyncio
import random

import grpc
import pytest

from dbrx_serve.services.inference.convert_pb import FINISH_REASON_OF_PB
from dbrx_serve.services.inference.params import SamplingParams
from dbrx_serve.services.tokenizer.config import TokenizerServiceConfig
from dbrx_serve.services.tokenizer.server import build_server as build_tokenizer_server
from dbrx_serve.shared.artifacts import MANIFEST, file_sha256
from dbrx_serve.shared.generated.dbrx.serve.v1 import common_pb2
from dbrx_serve.shared.generated.dbrx.serve.v1 import inference_pb2 as pb
from dbrx_serve.shared.generated.dbrx.serve.v1 import tokenizer_pb2, tokenizer_pb2_grpc

from tests.serving import served_in_thread
from .helpers import assert_same_greedy
from .served import inference_server, request, run, streamed, stub

PROMPTS = ["The quick brown fox", [10, 20, 30, 40], "Born in north-east France, Soyer trained as a",
           [300, 5, 7], list(range(1, 50))]
GREEDY = SamplingParams(max_new_tokens=12, temperature=0, return_logprobs=True)


@pytest.fixture(scope="module")
def served(engine_dir):
    with inference_server(engine_dir("fp32")) as served:
        yield served


def test_generate_and_the_concatenated_stream_equal_the_engines_own_output(served, fp32_engine, reference_model,
                                                                           banned):
    wanted = fp32_engine.generate(PROMPTS, GREEDY)

    async def main():
        async with grpc.aio.insecure_channel(served.address) as channel:
            messages = [request(p, 12, return_logprobs=True) for p in PROMPTS]
            return await asyncio.gather(asyncio.gather(*(stub(channel).Generate(m) for m in messages)),
                                        asyncio.gather(*(streamed(stub(channel), m) for m in messages)))
    unary, streams = run(main())
    for prompt, want, got, stream in zip(PROMPTS, wanted, unary, streams):
        ids = fp32_engine.prompts.ids(prompt)
        streamed_ids = [t for message in stream for t in message.token_ids]
        for output in (list(got.output_ids), streamed_ids):
            if assert_same_greedy(output, want.output_ids, ids, reference_model, banned):
                assert got.text == "".join(m.text_delta for m in stream) == want.text
                assert list(got.logprobs) == pytest.approx(want.logprobs, abs=2e-3)
        assert FINISH_REASON_OF_PB[got.finish_reason] is want.finish_reason
        assert [m.finish_reason for m in stream[:-1]] == [0] * (len(stream) - 1)  # set on the last only
        assert FINISH_REASON_OF_PB[stream[-1].finish_reason] is want.finish_reason
        assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (len(ids), len(got.output_ids))
        assert (stream[-1].usage.prompt_tokens, stream[-1].usage.completion_tokens) == (len(ids), len(streamed_ids))
        assert not any(m.HasField("usage") for m in stream[:-1])


def mixed_requests(count: int, seed: int = 0) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(0, 500) for _ in range(rng.randint(1, 60))], rng.randint(1, 12)) for _ in range(count)]


def test_64_concurrent_streams_each_equal_their_lone_run(served, fp32_engine, reference_model, banned):
    requests = mixed_requests(64)

    async def main():
        async with grpc.aio.insecure_channel(served.address) as channel:
            return await asyncio.gather(*(streamed(stub(channel), request(p, n, end_id=[100256]))
                                          for p, n in requests))
    streams, identical = run(main()), 0
    for (prompt, n), stream in zip(requests, streams):
        alone = fp32_engine.generate([prompt], SamplingParams(max_new_tokens=n, temperature=0, end_id=(100256,)))[0]
        got = [t for message in stream for t in message.token_ids]
        assert len(got) == len(alone.output_ids) == n
        identical += assert_same_greedy(got, alone.output_ids, prompt, reference_model, banned)
    assert identical >= 60  # the rest differ only at a float32 near-tie of the reference
    stats = run(served.stats())
    assert (stats.running, stats.waiting, stats.kv_blocks_used) == (0, 0, 0)


def test_a_seeded_sampled_stream_equals_the_engines_own_run(served, fp32_engine):
    params = SamplingParams(max_new_tokens=12, temperature=0.9, top_k=50, top_p=0.95, seed=1234)
    want = fp32_engine.generate(["What is AGI?"], params)[0]

    async def main():
        async with grpc.aio.insecure_channel(served.address) as channel:
            message = request("What is AGI?", 12, temperature=0.9, top_k=50, top_p=0.95, seed=1234)
            return await streamed(stub(channel), message), await stub(channel).Generate(message)
    stream, unary = run(main())
    assert [t for m in stream for t in m.token_ids] == list(unary.output_ids) == list(want.output_ids)
    assert unary.text == want.text


@pytest.fixture(scope="module")
def tokenizer_service(engine_dir):
    config = TokenizerServiceConfig(str(engine_dir("fp32") / "tokenizer"), num_threads=1)
    with served_in_thread(lambda: build_tokenizer_server(config)) as address:
        yield address


CHATS = [[("user", "Hello")],
         [("system", "You are helpful."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "What is AGI?")]]


@pytest.mark.parametrize("chat", CHATS)
def test_chat_messages_generate_from_the_tokenizer_services_template_ids(served, tokenizer_service, chat):
    messages = [tokenizer_pb2.ChatMessage(role=role, content=content) for role, content in chat]
    with grpc.insecure_channel(tokenizer_service) as channel:
        templated = tokenizer_pb2_grpc.TokenizerServiceStub(channel).ApplyChatTemplate(
            tokenizer_pb2.ApplyChatTemplateRequest(messages=messages, add_generation_prompt=True))
    ids = list(templated.results[0].ids)

    async def main():
        async with grpc.aio.insecure_channel(served.address) as channel:
            sampling = pb.SamplingParams(max_new_tokens=8, temperature=0)
            return await asyncio.gather(stub(channel).Generate(pb.GenerateRequest(messages=messages, sampling=sampling)),
                                        stub(channel).Generate(pb.GenerateRequest(input_ids=ids, sampling=sampling)))
    from_chat, from_ids = run(main())
    assert from_chat.usage.prompt_tokens == len(ids)
    assert list(from_chat.output_ids) == list(from_ids.output_ids) and from_chat.text == from_ids.text


def test_model_info_describes_the_engine(served, engine_dir):
    async def main():
        async with grpc.aio.insecure_channel(served.address) as channel:
            return await stub(channel).GetModelInfo(pb.GetModelInfoRequest()), await served.stats()
    info, stats = run(main())
    path = engine_dir("fp32")
    assert (info.engine_dir, info.backend, info.device, info.vocab_size) == (str(path), "dbrx-serve-torch", "cpu",
                                                                              100352)
    assert info.dtype == common_pb2.D_TYPE_FLOAT32 and info.quant_algo == "" and info.kv_cache_quant_algo == ""
    assert (info.mapping.tp_size, info.mapping.pp_size) == (1, 1)
    assert (info.max_batch_size, info.max_input_len, info.max_seq_len, info.max_num_tokens, info.tokens_per_block) \
        == (64, 128, 256, 256, 8)
    assert info.num_kv_blocks == stats.kv_blocks_total and info.max_queue_size == 4096
    assert info.manifest_sha256 == file_sha256(path / MANIFEST) and info.has_tokenizer
