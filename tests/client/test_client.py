"""The SDK against real servers: every RPC of docs/api.md through the sync and the asyncio
client, streaming equal to unary, typed errors with the status and the server's message."""

import asyncio

import grpc
import pytest

from dbrx_serve.client import (AsyncClient, Client, Delta, InvalidInput, JobEvent, JobFailed, NotFound,
                               state_name)

WAIT = 120
CHAT = [{"role": "user", "content": "What is AGI?"}]


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, WAIT))


def joined(deltas: list[Delta]) -> tuple[str, tuple[int, ...]]:
    return "".join(d.text for d in deltas), tuple(i for d in deltas for i in d.token_ids)


def test_tokenizer_rpcs_sync_and_async_agree(servers):
    with Client(servers.tokenizer, timeout=WAIT) as client:
        ids = client.encode(["Hello world", "What is AGI?"])
        sync = (ids, client.decode(ids), client.apply_chat_template(CHAT), client.tokenizer_info())

    async def async_calls():
        async with AsyncClient(servers.tokenizer, timeout=WAIT) as client:
            ids = await client.encode(["Hello world", "What is AGI?"])
            return ids, await client.decode(ids), await client.apply_chat_template(CHAT), await client.tokenizer_info()
    assert run(async_calls()) == sync
    ids, texts, chat, info = sync
    assert texts == ["Hello world", "What is AGI?"] and len(ids) == 2
    assert chat[-1] != ids[1][-1] and info.eos_id == 100257 and info.model_vocab_size == 100352


def test_inference_rpcs_sync_stream_equals_unary(servers):
    with Client(servers.inference, timeout=WAIT) as client:
        info = client.model_info()
        whole = client.generate("What is AGI?", max_new_tokens=8, logprobs=True)
        deltas = list(client.generate_stream("What is AGI?", max_new_tokens=8, logprobs=True))
        chat = client.generate(CHAT, max_new_tokens=4)
    assert info.has_tokenizer and info.max_seq_len == 256
    assert joined(deltas) == (whole.text, whole.token_ids) and len(whole.token_ids) == 8
    assert tuple(p for d in deltas for p in d.logprobs) == pytest.approx(whole.logprobs)
    assert deltas[-1].finish_reason == whole.finish_reason == "length" and deltas[-1].usage == whole.usage
    assert all(d.finish_reason is None and d.usage is None for d in deltas[:-1])
    assert chat.usage.completion_tokens == 4 and chat.usage.prompt_tokens > whole.usage.prompt_tokens


def test_inference_rpcs_async_stream_equals_unary_and_sync(servers):
    async def calls():
        async with AsyncClient(servers.inference, timeout=WAIT) as client:
            info = await client.model_info()
            whole = await client.generate([9906, 1917], max_new_tokens=6)
            deltas = [d async for d in client.generate_stream([9906, 1917], max_new_tokens=6)]
            return info, whole, deltas
    info, whole, deltas = run(calls())
    assert joined(deltas) == (whole.text, whole.token_ids) and deltas[-1].usage == whole.usage
    with Client(servers.inference, timeout=WAIT) as client:
        assert client.generate([9906, 1917], max_new_tokens=6).token_ids == whole.token_ids
        assert client.model_info() == info


def test_job_rpcs_sync(servers, tiny_model_dir, tmp_path):
    events: list[JobEvent] = []
    with Client(servers.converter, timeout=WAIT) as converter, Client(servers.builder, timeout=WAIT) as builder:
        convert = converter.submit_convert(str(tiny_model_dir), str(tmp_path / "ckpt"), dtype="float32",
                                           use_weight_only=True, weight_only_precision="int8")
        done = convert.wait(progress=events.append)
        build = builder.submit_build(str(tmp_path / "ckpt"), str(tmp_path / "engine"), max_batch_size=4,
                                     max_seq_len=256, idempotency_key="sdk-build-1").wait()
        again = builder.submit_build(str(tmp_path / "ckpt"), str(tmp_path / "engine"), max_batch_size=4,
                                     max_seq_len=256, idempotency_key="sdk-build-1")
        listed = converter.list_jobs(kind="convert", state="succeeded", limit=1000)
        watched = list(converter.watch_job(convert.id, after_seq=1))
        assert converter.get_job(convert.id) == done and converter.cancel_job(convert.id).state == done.state
    assert state_name(done) == state_name(build) == "succeeded" and again.id == build.id
    assert [e.seq for e in events] == list(range(1, len(events) + 1)) and events[-1].progress == 1.0
    assert watched == events[1:] and convert.id in {job.id for job in listed}
    assert (tmp_path / "engine" / "manifest.json").is_file()


def test_job_rpcs_async_and_a_failed_job_raises_job_failed(servers, tiny_model_dir, tmp_path):
    (tmp_path / "not-a-model").mkdir()

    async def calls():
        async with AsyncClient(servers.converter, timeout=WAIT) as converter, \
                AsyncClient(servers.builder, timeout=WAIT) as builder:
            seen: list[JobEvent] = []
            convert = await converter.submit_convert(str(tiny_model_dir), str(tmp_path / "ckpt"), dtype="float32")
            await convert.wait(progress=seen.append)
            build = await builder.submit_build(str(tmp_path / "ckpt"), str(tmp_path / "engine"), max_seq_len=256)
            events = [e async for e in build.watch()]
            listed = await builder.list_jobs(kind="build")
            bad = await converter.submit_convert(str(tmp_path / "not-a-model"), str(tmp_path / "bad"))
            with pytest.raises(JobFailed) as failed:
                await bad.wait()
            return seen, await build.refresh(), events, listed, failed.value, await converter.cancel_job(bad.id)
    seen, build, events, listed, failed, cancelled = run(calls())
    assert state_name(seen[-1]) == state_name(events[-1]) == state_name(build) == "succeeded"
    assert build.id in {job.id for job in listed} and (tmp_path / "engine" / "manifest.json").is_file()
    assert state_name(failed.job) == state_name(cancelled) == "failed" and "failed" in str(failed)


def test_errors_are_typed_with_the_status_and_the_servers_message(servers):
    with Client(servers.inference, timeout=WAIT) as client:
        with pytest.raises(InvalidInput) as bad:
            client.generate("Hi", max_new_tokens=0)
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT and "max_new_tokens" in bad.value.details
    assert str(bad.value).startswith("invalid_argument: ")

    async def unknown_job():
        async with AsyncClient(servers.converter, timeout=WAIT) as client:
            await client.get_job("6f1c0000-0000-4000-8000-000000000000")
    with pytest.raises(NotFound) as missing:
        run(unknown_job())
    assert missing.value.code == grpc.StatusCode.NOT_FOUND and "no job with id" in missing.value.details
