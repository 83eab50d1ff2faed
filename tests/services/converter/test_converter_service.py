"""ConverterService + JobService on a real gRPC server, the CONVERT job handler on a
real job store (SQLite; PostgreSQL too when DBRX_TEST_POSTGRES_URL is set), and
`dbrx convert` in-process and against the server."""

import json
import os
import shutil
import threading

import grpc
import pytest
from safetensors.torch import load_file, save_file

from dbrx_serve.cli.main import main as dbrx
from dbrx_serve.services.converter.convert_pb import options_from_pb, options_to_pb
from dbrx_serve.services.converter.options import ConvertOptions
from dbrx_serve.services.converter.stage import CONVERTER
from dbrx_serve.shared.job_stage import build_server
from dbrx_serve.shared import rpc
from dbrx_serve.shared.artifacts import verify_manifest
from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.generated.dbrx.serve.v1 import (common_pb2, converter_pb2 as pb, converter_pb2_grpc,
                                                       jobs_pb2, jobs_pb2_grpc)
from dbrx_serve.shared.jobstore import CONVERT, JobState, JobStore, StoreConfig, Worker
from dbrx_serve.shared.options import ANY_ABSOLUTE_PATH, PathPolicy

from tests.serving import served_in_thread
from .conftest import leftovers

WAIT = 60


@pytest.fixture
def store(database_url):
    with JobStore(StoreConfig(database_url)) as opened:
        yield opened


def served(store, paths: PathPolicy = ANY_ABSOLUTE_PATH):
    """The converter server on port 0, run by its own event loop in a thread."""
    return served_in_thread(lambda: build_server(CONVERTER, store, rpc.ServerConfig(), paths))


def request(model_dir, out, **fields) -> pb.ConvertRequest:
    return pb.ConvertRequest(model_dir=str(model_dir), output_dir=str(out), **fields)


def test_request_round_trips_through_options(tmp_path):
    options = ConvertOptions("/m", "/o", dtype="bfloat16", tp_size=4, pp_size=2, moe_ep_size=2,
                             use_weight_only=True, weight_only_precision="int4", int8_kv_cache=True,
                             calib_dataset="/d.jsonl", calib_size=3, logits_dtype="float16", workers=2, overwrite=True)
    assert options_from_pb(options_to_pb(options)) == options
    assert options_from_pb(pb.ConvertRequest(model_dir="/m", output_dir="/o")) == ConvertOptions("/m", "/o")
    with pytest.raises(InvalidInput, match="model_dir 'rel' must be an absolute path"):
        options_from_pb(pb.ConvertRequest(model_dir="rel", output_dir="/o"))


def test_submit_watch_and_idempotency_over_grpc(shard_model, store, tmp_path):
    out = tmp_path / "ckpt"
    with served(store) as target, grpc.insecure_channel(target) as channel:
        converter, jobs = converter_pb2_grpc.ConverterServiceStub(channel), jobs_pb2_grpc.JobServiceStub(channel)
        job = converter.SubmitConvert(request(shard_model[0], out, tp_size=2, dtype=common_pb2.D_TYPE_FLOAT16,
                                              idempotency_key="k1"))
        assert job.state == jobs_pb2.JOB_STATE_QUEUED and job.output_dir == str(out)
        again = converter.SubmitConvert(request(shard_model[0], out, tp_size=2, dtype=common_pb2.D_TYPE_FLOAT16,
                                                idempotency_key="k1"))
        assert again.id == job.id
        with pytest.raises(grpc.RpcError) as other:  # the same key for another request
            converter.SubmitConvert(request(shard_model[0], out, tp_size=1, idempotency_key="k1"))
        assert other.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        worker = threading.Thread(target=CONVERTER.worker(store, lease_seconds=10).run_once)
        worker.start()
        events = list(jobs.WatchJob(jobs_pb2.WatchJobRequest(id=job.id)))
        worker.join(WAIT)
        assert events[-1].state == jobs_pb2.JOB_STATE_SUCCEEDED
        assert [e.message for e in events if e.state == jobs_pb2.JOB_STATE_RUNNING][-2:] == ["rank 1: head",
                                                                                             "publishing"]
        done = jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id))
        assert json.loads(done.result_json)["world_size"] == 2
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    verify_manifest(out)


@pytest.mark.parametrize("fields,match", [
    (dict(tp_size=2, moe_tp_size=2, moe_ep_size=2), "moe_tp_size 2 x moe_ep_size 2 must equal tp_size 2"),
    (dict(dtype=7), "unknown dtype 7"),
    (dict(use_weight_only=False, quantize_at_build=True), "--quantize_at_build needs --use_weight_only"),
])
def test_invalid_requests_refused_with_invalid_argument(fields, match, shard_model, store, tmp_path):
    with served(store) as target, grpc.insecure_channel(target) as channel:
        with pytest.raises(grpc.RpcError) as error:
            converter_pb2_grpc.ConverterServiceStub(channel).SubmitConvert(
                request(shard_model[0], tmp_path / "out", **fields))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and match in error.value.details()
    assert store.list_jobs() == []


def test_a_server_with_allowed_roots_refuses_paths_outside_them(shard_model, store, tmp_path):
    allowed = tmp_path / "allowed"
    with served(store, PathPolicy((str(allowed),))) as target, grpc.insecure_channel(target) as channel:
        stub = converter_pb2_grpc.ConverterServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.SubmitConvert(request(allowed / "model", allowed / ".." / "elsewhere"))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is outside the directories the converter service accepts" in error.value.details()
        assert store.list_jobs() == []
        shutil.copytree(shard_model[0], allowed / "model")
        job = stub.SubmitConvert(request(allowed / "model", allowed / "out"))
    assert store.get(job.id).spec["output_dir"] == str(allowed / "out")


def test_a_worker_with_allowed_roots_refuses_a_job_outside_them(shard_model, store, tmp_path):
    """A job that reached the store some other way (or a server on another file system):
    the worker checks the paths again and fails the job at once, writing nothing."""
    allowed = tmp_path / "allowed"
    job = store.submit(CONVERT, ConvertOptions(str(shard_model[0]), str(allowed / "out")).to_dict(),
                       output_dir=str(allowed / "out"))
    done = CONVERTER.worker(store, PathPolicy((str(allowed),)), lease_seconds=10).run_once()
    assert done.id == job.id and done.state is JobState.FAILED and done.attempts == 1
    assert f"model_dir '{shard_model[0]}' is outside the directories the converter service accepts" in done.message
    assert not allowed.exists()


def files_of(directory) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_an_output_over_the_model_is_refused_at_submit_and_in_the_worker(shard_model, store, tmp_path):
    """Paths are compared resolved: `x/../model`, or the model named through a link, is the
    model, and --overwrite must never replace it with the checkpoint."""
    model = tmp_path / "model"
    shutil.copytree(shard_model[0], model)
    (tmp_path / "x").mkdir()
    (tmp_path / "link").symlink_to(model)
    before = files_of(model)
    overlapping = [(model, tmp_path / "x" / ".." / "model"), (tmp_path / "link", model)]
    with served(store) as target, grpc.insecure_channel(target) as channel:
        stub = converter_pb2_grpc.ConverterServiceStub(channel)
        for model_dir, out in overlapping:
            with pytest.raises(grpc.RpcError) as error:
                stub.SubmitConvert(request(model_dir, out, overwrite=True))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "overlaps the input" in error.value.details()
    assert store.list_jobs() == []
    for model_dir, out in overlapping:  # jobs that reached the store some other way: the worker checks again
        job = store.submit(CONVERT, ConvertOptions(str(model_dir), str(out), overwrite=True).to_dict(),
                           output_dir=str(out))
        done = CONVERTER.worker(store, lease_seconds=10).run_once()
        assert (done.id, done.state, done.attempts) == (job.id, JobState.FAILED, 1)
        assert "overlaps the input" in done.message
    assert files_of(model) == before


def dangling_link(root):
    (root / "out").symlink_to(root / "nowhere")
    return root / "out"


def below_a_loop(root):
    (root / "loop").symlink_to(root / "loop")
    return root / "loop" / "out"


@pytest.mark.parametrize("output,message", [
    (lambda root: root / ("n" * 256) / "ckpt", "has a name of 256 bytes, over the 255 bytes"),
    (lambda root: root / ("n" * 230), "has a name of 230 bytes, over the 217 bytes"),
    (dangling_link, "is a symbolic link to"),
    (below_a_loop, "Too many levels of symbolic links"),
], ids=["name over 255 bytes", "no room for the temporary sibling", "a dangling link", "below a loop of links"])
def test_a_hopeless_output_path_fails_the_job_at_once_before_any_work(output, message, shard_model, store,
                                                                      tmp_path):
    """Retrying cannot fix these: the job fails on its first attempt, naming the path, and
    before any conversion work (no progress)."""
    out = output(tmp_path)
    job = store.submit(CONVERT, ConvertOptions(str(shard_model[0]), str(out)).to_dict(), output_dir=str(out))
    done = CONVERTER.worker(store, lease_seconds=10).run_once()
    assert (done.id, done.state, done.attempts) == (job.id, JobState.FAILED, 1)
    assert message in done.message and str(tmp_path) in done.message
    assert [e.progress for e in store.events(job.id)] == [0.0, 0.0, 0.0]  # queued, started, failed
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]


def test_bad_model_fails_the_job_once_with_its_message(shard_model, store, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(shard_model[0], model_dir)
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    name = "transformer.blocks.2.ffn.experts.mlp.v1"
    shard = model_dir / index["weight_map"][name]
    tensors = load_file(shard)
    tensors[name].view(-1)[3] = float("nan")
    save_file(tensors, shard, metadata={"format": "pt"})
    out = tmp_path / "out"
    job = store.submit(CONVERT, ConvertOptions(str(model_dir), str(out), tp_size=2).to_dict(), output_dir=str(out))
    done = CONVERTER.worker(store).run_once()
    assert done.id == job.id and done.state is JobState.FAILED and done.attempts == 1
    assert f"tensor {name} in" in done.message and "NaN or Inf" in done.message
    assert leftovers(out) == []


def test_cancel_while_running_stops_at_a_checkpoint_and_leaves_nothing(shard_model, store, tmp_path):
    """The store's cancel is requested from inside the first progress report (deterministic timing)."""
    out = tmp_path / "out"
    submitted = store.submit(CONVERT, ConvertOptions(str(shard_model[0]), str(out), tp_size=2, pp_size=2).to_dict())

    def cancelling(job, ctx):
        report = ctx.progress

        def progress(fraction, message):
            store.cancel(job.id)
            report(fraction, message)
        ctx.progress = progress
        return CONVERTER.handle(job, ctx)

    done = Worker(store, CONVERT, cancelling).run_once()
    assert done.id == submitted.id and done.state is JobState.CANCELLED and leftovers(out) == []
    assert done.progress < 1


def test_dbrx_convert_in_process(shard_model, database_url, tmp_path, capsys):
    out = tmp_path / "ckpt"
    code = dbrx(["convert", "--model_dir", str(shard_model[0]), "--output_dir", str(out), "--tp_size", "2",
                 "--use_weight_only", "--weight_only_precision", "int4", "--database_url", database_url])
    captured = capsys.readouterr()
    assert code == 0 and f"checkpoint written to {out}" in captured.out
    assert "rank 1: head" in captured.err  # progress lines (no tty here)
    assert json.loads((out / "config.json").read_text())["quantization"]["quant_algo"] == "W4A16"
    with JobStore.open(database_url) as store:
        assert [j.state for j in store.list_jobs(CONVERT)] == [JobState.SUCCEEDED]


def test_dbrx_convert_failure_exits_non_zero_with_the_message(shard_model, database_url, tmp_path, capsys):
    code = dbrx(["convert", "--model_dir", str(shard_model[0]), "--output_dir", str(tmp_path / "out"),
                 "--tp_size", "8", "--database_url", database_url])
    assert code == 1
    assert "failed: mapping: tp_size 8 does not divide the 4 attention heads" in capsys.readouterr().err
    assert leftovers(tmp_path / "out") == []


def test_dbrx_convert_bad_flags_refused_before_submitting(shard_model, database_url, tmp_path, capsys):
    code = dbrx(["convert", "--model_dir", str(shard_model[0]), "--output_dir", str(tmp_path / "out"),
                 "--weight_only_precision", "int3", "--database_url", database_url])
    assert code == 2 and "unknown weight_only_precision 'int3'" in capsys.readouterr().err
    with JobStore.open(database_url) as store:
        assert store.list_jobs() == []


def test_dbrx_convert_with_server(shard_model, store, tmp_path, capsys):
    out = tmp_path / "ckpt"
    worker = CONVERTER.worker(store, poll_seconds=0.05)
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    thread.start()
    try:
        with served(store) as target:
            code = dbrx(["convert", "--model_dir", str(shard_model[0]), "--output_dir", str(out),
                         "--pp_size", "2", "--server", target])
            assert code == 0 and f"checkpoint written to {out}" in capsys.readouterr().out
            code = dbrx(["convert", "--model_dir", str(shard_model[0]), "--output_dir", str(out),
                         "--server", target])
            assert code == 1 and "not empty: pass --overwrite" in capsys.readouterr().err
    finally:
        worker.stop()
        thread.join(WAIT)
    verify_manifest(out)
