"""BuilderService end to end: a real gRPC server on port 0 (BuilderService +
JobService), a worker thread leasing BUILD jobs, the job store on SQLite (and
PostgreSQL when DBRX_TEST_POSTGRES_URL is set)."""

import asyncio
import os
import shutil
import threading
import time

import grpc
import pytest

from dbrx_serve.services.builder.options import BuildOptions
from dbrx_serve.services.builder.stage import BUILDER
from dbrx_serve.services.converter.convert import convert
from dbrx_serve.services.converter.options import ConvertOptions
from dbrx_serve.shared.job_stage import build_server
from dbrx_serve.shared import rpc
from dbrx_serve.shared.artifacts import verify_manifest
from dbrx_serve.shared.generated.dbrx.serve.v1 import builder_pb2 as pb, builder_pb2_grpc as pb_grpc
from dbrx_serve.shared.generated.dbrx.serve.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc
from dbrx_serve.shared.jobstore import BUILD, JobState, JobStore, StoreConfig
from dbrx_serve.shared.options import ANY_ABSOLUTE_PATH, PathPolicy
from tests.shared.jobstore.conftest import POSTGRES_URL, postgres_schema

from .conftest import leftovers


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        urls = iter([f"sqlite:///{tmp_path / 'jobs.db'}"])
    elif not POSTGRES_URL:
        pytest.skip("set DBRX_TEST_POSTGRES_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    else:
        urls = postgres_schema(POSTGRES_URL)
    with JobStore(StoreConfig(next(urls))) as opened:
        yield opened
    for _ in urls:  # drops the PostgreSQL schema
        pass


@pytest.fixture
def worker(store):
    """A builder worker thread on the store, stopped after the test."""
    w = BUILDER.worker(store, poll_seconds=0.05, lease_seconds=10)
    thread = threading.Thread(target=w.run_forever, daemon=True)
    thread.start()
    yield w
    w.stop()
    thread.join()


def call(store, body, paths: PathPolicy = ANY_ABSOLUTE_PATH):
    async def main():
        server, port = build_server(BUILDER, store, rpc.ServerConfig(), paths)
        await rpc.start(server)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await body(pb_grpc.BuilderServiceStub(channel), jobs_pb2_grpc.JobServiceStub(channel))
        finally:
            await server.stop(None)
    return asyncio.run(main())


async def submit_and_watch(builder, jobs, request):
    job = await builder.SubmitBuild(request)
    events = [e async for e in jobs.WatchJob(jobs_pb2.WatchJobRequest(id=job.id))]
    return job, events, await jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id))


def test_submitted_build_runs_on_a_worker(store, worker, checkpoints, tmp_path):
    request = pb.BuildRequest(checkpoint_dir=str(checkpoints(tp_size=2)), output_dir=str(tmp_path / "engine"),
                              max_batch_size=4, tokens_per_block=16, kv_cache_dtype=common_pb2.KV_CACHE_D_TYPE_MODEL,
                              idempotency_key="build-1")

    async def body(builder, jobs):
        first, events, final = await submit_and_watch(builder, jobs, request)
        again = await builder.SubmitBuild(request)
        return first, events, final, again

    first, events, final, again = call(store, body)
    assert first.kind == jobs_pb2.JOB_KIND_BUILD and again.id == first.id
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED and final.progress == 1.0
    assert any("rank 1: layer 2" in e.message for e in events)
    assert events[-1].state == jobs_pb2.JOB_STATE_SUCCEEDED
    verify_manifest(tmp_path / "engine")
    assert '"tokens_per_block": 16' in (tmp_path / "engine" / "config.json").read_text()


def test_a_bad_checkpoint_fails_the_job_with_its_message(store, worker, checkpoints, tmp_path):
    ckpt = shutil.copytree(checkpoints(), tmp_path / "ckpt")
    (ckpt / "rank0.safetensors").write_bytes(b"\0" * 16)
    request = pb.BuildRequest(checkpoint_dir=str(ckpt), output_dir=str(tmp_path / "engine"))
    _, _, final = call(store, lambda builder, jobs: submit_and_watch(builder, jobs, request))
    assert final.state == jobs_pb2.JOB_STATE_FAILED and final.attempts == 1
    assert "rank0.safetensors has 16 bytes, the manifest says" in final.message
    assert not (tmp_path / "engine").exists()


@pytest.mark.parametrize("request_fields,match", [
    ({"checkpoint_dir": "relative/ckpt", "output_dir": "/tmp/e"}, "must be an absolute path"),
    ({"checkpoint_dir": "/c", "output_dir": "/e", "tokens_per_block": 48}, "power of two"),
    ({"checkpoint_dir": "/c", "output_dir": "/e", "max_beam_width": 2}, "max_beam_width 2"),
    ({"output_dir": "/e"}, "--checkpoint_dir is required"),
], ids=["relative", "tokens_per_block", "beam", "no-checkpoint"])
def test_bad_requests_get_invalid_argument(request_fields, match, store):
    async def body(builder, jobs):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await builder.SubmitBuild(pb.BuildRequest(**request_fields))
        return error.value
    error = call(store, body)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and match in error.details()
    assert store.list_jobs() == []


@pytest.mark.parametrize("field", ["checkpoint_dir", "output_dir", "tokenizer_dir"])
def test_a_server_with_allowed_roots_refuses_paths_outside_them(field, store):
    inside = {"checkpoint_dir": "/models/ckpt", "output_dir": "/models/engine", "tokenizer_dir": "/models/tok"}

    async def body(builder, jobs):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await builder.SubmitBuild(pb.BuildRequest(**{**inside, field: "/etc/dbrx"}))
        return error.value
    error = call(store, body, PathPolicy(("/models",)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{field} '/etc/dbrx' is outside the directories the builder service accepts (--allowed_root /models)" in error.details()
    assert store.list_jobs() == []


def test_an_output_over_an_input_is_refused_at_submit_and_in_the_worker(store, build_model, tmp_path):
    """Paths are compared resolved, against the checkpoint and the model its manifest names
    (the tokenizer's source): --overwrite must never replace either with the engine."""
    model = shutil.copytree(build_model[0], tmp_path / "model")
    ckpt = tmp_path / "ckpt"
    convert(ConvertOptions(str(model), str(ckpt), dtype="float32"))
    (tmp_path / "x").mkdir()
    (tmp_path / "link").symlink_to(ckpt)
    at_submit = [(ckpt, tmp_path / "x" / ".." / "ckpt"), (tmp_path / "link", ckpt)]

    async def body(builder, jobs):
        refusals = []
        for checkpoint_dir, out in at_submit:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await builder.SubmitBuild(pb.BuildRequest(checkpoint_dir=str(checkpoint_dir), output_dir=str(out),
                                                          overwrite=True))
            refusals.append((error.value.code(), error.value.details()))
        return refusals
    for code, details in call(store, body):
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "overlaps the input" in details
    assert store.list_jobs() == []
    for checkpoint_dir, out in at_submit + [(ckpt, tmp_path / "x" / ".." / "model")]:
        job = store.submit(BUILD, BuildOptions(str(checkpoint_dir), str(out), overwrite=True).to_dict(),
                           output_dir=str(out))
        done = BUILDER.worker(store, lease_seconds=10).run_once()
        assert (done.id, done.state, done.attempts) == (job.id, JobState.FAILED, 1)
        assert "overlaps the input" in done.message
    verify_manifest(ckpt)
    assert sorted(os.listdir(model)) == sorted(os.listdir(build_model[0]))


def test_a_long_unknown_choice_is_refused_with_its_echo_cut(store):
    """The refusal repeats the value: whole, it would overflow the client's 8 KiB header limit."""
    async def body(builder, jobs):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await builder.SubmitBuild(pb.BuildRequest(checkpoint_dir="/c", output_dir="/e",
                                                      gpt_attention_plugin="x" * 20_000))
        return error.value
    error = call(store, body)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("unknown --gpt_attention_plugin 'xxx") and "choose one of auto" in error.details()
    assert len(error.details()) < 600


def test_a_queued_build_can_be_cancelled(store, checkpoints, tmp_path):
    request = pb.BuildRequest(checkpoint_dir=str(checkpoints()), output_dir=str(tmp_path / "engine"))

    async def body(builder, jobs):
        job = await builder.SubmitBuild(request)
        return await jobs.CancelJob(jobs_pb2.CancelJobRequest(id=job.id))
    assert call(store, body).state == jobs_pb2.JOB_STATE_CANCELLED


def test_a_retried_build_removes_what_the_dead_worker_left(store, checkpoints, tmp_path):
    out = tmp_path / "engine"
    stale = tmp_path / ".engine.tmp-deadworker"
    stale.mkdir()
    (stale / "rank0.safetensors").write_bytes(b"half a file")
    job = store.submit(BUILD, BuildOptions(str(checkpoints()), str(out)).to_dict(), output_dir=str(out))
    assert store.lease(BUILD, "dead-worker", lease_seconds=0.01).id == job.id
    time.sleep(0.05)  # the dead worker's lease expires
    done = BUILDER.worker(store).run_once()
    assert (done.id, done.state, done.attempts) == (job.id, JobState.SUCCEEDED, 2)
    assert leftovers(out) == ["engine"]


def test_options_survive_the_request_both_ways():
    from dbrx_serve.services.builder.convert_pb import options_from_pb, options_to_pb

    options = BuildOptions("/c", "/e", max_batch_size=3, max_input_len=5, max_seq_len=7, max_num_tokens=11,
                           kv_cache_dtype="int8", tokens_per_block=64, gemm_plugin="float16", moe_plugin="disable",
                           context_fmha="disable", remove_input_padding="disable", tokenizer_dir="/t", workers=2,
                           overwrite=True)
    assert options_from_pb(options_to_pb(options)) == options
    assert options_from_pb(options_to_pb(BuildOptions("/c", "/e"))) == BuildOptions("/c", "/e")
