"""What every job stage's server shares (shared/job_stage.py), for the converter and the
builder: a hostile request is refused by its size before any path is resolved, and
no request stalls the server (health answers while hostile requests are in flight);
the jobs of a worker that was killed do not stay RUNNING, even with no worker left."""

import multiprocessing
import os
import signal
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dbrx_serve.services.builder.stage import BUILDER
from dbrx_serve.services.converter.stage import CONVERTER
from dbrx_serve.shared import rpc
from dbrx_serve.shared.generated.dbrx.serve.v1 import builder_pb2, builder_pb2_grpc, converter_pb2, converter_pb2_grpc
from dbrx_serve.shared.job_stage import build_server, start_thread, sweep_expired_leases
from dbrx_serve.shared.jobstore import CONVERT, JobState, JobStore, StoreConfig
from dbrx_serve.shared.options import PathPolicy

from tests.faults import wait_for
from tests.serving import served_in_thread
from tests.shared.jobstore.jobstore_procs import hang_in_a_job

WAIT = 120  # seconds a hostile call may take before the test calls it a hang
HEALTH_WAIT = 5  # a server that answers health later than this is stalled
NUM_HOSTILE = 3


def submit_convert(channel, path):
    request = converter_pb2.ConvertRequest(model_dir=path, output_dir=path + "/ckpt")
    return converter_pb2_grpc.ConverterServiceStub(channel).SubmitConvert.future(request, timeout=WAIT)


def submit_build(channel, path):
    request = builder_pb2.BuildRequest(checkpoint_dir=path, output_dir=path + "/engine")
    return builder_pb2_grpc.BuilderServiceStub(channel).SubmitBuild.future(request, timeout=WAIT)


@pytest.mark.parametrize("stage,submit", [(CONVERTER, submit_convert), (BUILDER, submit_build)],
                         ids=["converter", "builder"])
def test_a_path_of_many_components_is_refused_by_its_size_and_never_stalls_the_server(stage, submit, tmp_path):
    """Under 1 MB per path, about 180,000 components: resolving one takes seconds."""
    hostile = str(tmp_path) + "/a/.." * 180_000
    with JobStore(StoreConfig(f"sqlite:///{tmp_path / 'jobs.db'}")) as store, served_in_thread(
            lambda: build_server(stage, store, rpc.ServerConfig(), PathPolicy((str(tmp_path),)))) as target, \
            grpc.insecure_channel(target) as channel:
        calls = [submit(channel, hostile) for _ in range(NUM_HOSTILE)]
        health = health_pb2_grpc.HealthStub(channel)
        while True:  # raises DEADLINE_EXCEEDED if a hostile call holds the server's event loop
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_WAIT).status == \
                health_pb2.HealthCheckResponse.SERVING
            if all(call.done() for call in calls):
                break
        for call in calls:
            assert call.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"is {len(hostile)} bytes long, over the 4095 bytes a path may have" in call.details()
        assert store.list_jobs() == []


@pytest.mark.parametrize("max_attempts,state,message", [
    (2, JobState.QUEUED, "attempt 1 of 2 failed, will retry: worker doomed stopped heartbeating; its lease expired"),
    (1, JobState.FAILED, "failed after 1 attempt; last error: worker doomed stopped heartbeating; its lease expired"),
], ids=["queued-again", "out-of-attempts"])
def test_a_sigkilled_workers_job_leaves_running_with_no_worker_left(tmp_path, max_attempts, state, message):
    """The sweep a job server runs (sweep_expired_leases) ends or requeues it once its lease expires."""
    database_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    spawn = multiprocessing.get_context("spawn")
    with JobStore(StoreConfig(database_url)) as store:
        job = store.submit(CONVERT, {}, max_attempts=max_attempts)
        started = spawn.Event()
        doomed = spawn.Process(target=hang_in_a_job, args=(database_url, started, 1.0))
        doomed.start()
        assert started.wait(WAIT), "the doomed worker never started the job"
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.join(WAIT)
        stop = threading.Event()
        sweeper = start_thread(lambda: sweep_expired_leases(store, CONVERT, stop, seconds=0.1), "test-sweep")
        try:
            swept = wait_for(lambda: (now := store.get(job.id)).state is not JobState.RUNNING and now, "the sweep")
        finally:
            stop.set()
            sweeper.join(WAIT)
    assert swept.state is state and swept.message.startswith(message)
