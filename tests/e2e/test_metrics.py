"""Each service's /metrics, scraped after known requests: the gRPC counters and latency
histograms per method and status, the inference counters, gauges and histograms, the job counts
and durations, all moved by exactly what was done (real servers on localhost, --metrics_port 0)."""

import contextlib

from dbrx_serve.client import Client, InvalidInput
from dbrx_serve.services.builder.stage import BUILDER
from dbrx_serve.services.converter.stage import CONVERTER
from dbrx_serve.services.inference import server as inference
from dbrx_serve.services.inference.config import InferenceServiceConfig
from dbrx_serve.services.tokenizer.server import build_server as build_tokenizer_server
from dbrx_serve.shared import job_stage, rpc
from dbrx_serve.shared.jobstore import JobStore
from dbrx_serve.shared.metrics import JobMetrics

from tests.client.conftest import tokenizer_config
from tests.serving import scrape, served_in_thread, value
from tests.services.inference.conftest import engine_dir, engine_dirs, one_thread  # noqa: F401 (fixtures)
from tests.services.inference.served import SERVING, wait_for_health

WAIT = 120
WITH_METRICS = rpc.ServerConfig(metrics_port=0)
TOKENIZER, INFERENCE = "dbrx.serve.v1.TokenizerService", "dbrx.serve.v1.InferenceService"


@contextlib.contextmanager
def served(build, **serving):
    """A server from `build()` in a thread; yields (its address, its /metrics URL)."""
    servers = []

    def built():
        server, port = build()
        servers.append(server)
        return server, port
    with served_in_thread(built, **serving) as address:
        yield address, f"http://127.0.0.1:{servers[0].metrics_http.server_port}/metrics"


def calls(samples, service: str, method: str, code: str = "OK") -> tuple[float, float]:
    """(calls counted, calls timed) of one method and status."""
    counted = value(samples, "dbrx:grpc_requests_total", service=service, method=method, code=code)
    return counted, value(samples, "dbrx:grpc_request_duration_seconds_count", service=service, method=method)


def test_the_tokenizer_counts_and_times_each_call_by_method_and_status(engine_dir):
    with served(lambda: build_tokenizer_server(tokenizer_config(engine_dir("fp32"), WITH_METRICS))) as (address, url):
        with Client(address, timeout=WAIT) as client:
            for _ in range(3):
                client.encode(["Hello world"])
            try:
                client.decode([[10 ** 9]])
            except InvalidInput:
                pass
        samples = scrape(url)
    assert calls(samples, TOKENIZER, "Encode") == (3, 3)
    assert calls(samples, TOKENIZER, "Decode", "INVALID_ARGUMENT") == (1, 1)


def test_inference_counts_tokens_finish_reasons_and_shows_its_gauges(engine_dir):
    config = InferenceServiceConfig(str(engine_dir("fp32")), device="cpu", server=WITH_METRICS)
    with served(lambda: inference.build_server(config), start=inference.start,
                on_stop=lambda server: server.host.close()) as (address, url):
        wait_for_health(address, SERVING)
        before = scrape(url)  # the warm-up's tokens never reach the counters: it is not a call
        with Client(address, timeout=WAIT) as client:
            first = client.generate([9906, 1917, 11], max_new_tokens=5)
            deltas = list(client.generate_stream([9906, 1917], max_new_tokens=3))
        samples = scrape(url)
    generated = len(first.token_ids) + sum(len(d.token_ids) for d in deltas)
    assert value(samples, "dbrx:prompt_tokens_total") - value(before, "dbrx:prompt_tokens_total") == 5
    assert value(samples, "dbrx:generation_tokens_total") == generated == 8
    assert value(samples, "dbrx:request_success_total", finished_reason="length") == 2
    for name in ("time_to_first_token", "e2e_request_latency"):
        assert value(samples, f"dbrx:{name}_seconds_count") == 2
    assert value(samples, "dbrx:time_per_output_token_seconds_count") == 4 + 2
    assert calls(samples, INFERENCE, "Generate") == calls(samples, INFERENCE, "GenerateStream") == (1, 1)
    assert value(samples, "dbrx:num_requests_running") == value(samples, "dbrx:num_requests_waiting") == 0
    assert value(samples, "dbrx:kv_blocks_used") == 0 and value(samples, "dbrx:kv_blocks_free") > 0


def stage_server(stage, store, workers: list):
    """The stage's server with metrics, and a worker thread recording into its registry."""
    server, port = job_stage.build_server(stage, store, WITH_METRICS)
    worker = stage.worker(store, poll_seconds=0.1, metrics=JobMetrics(server.registry))
    workers.append((worker, job_stage.start_worker_thread(worker, f"metrics-test-{stage.name}")))
    return server, port


def test_converter_and_builder_count_jobs_per_state_and_time_them(tiny_model_dir, tmp_path):
    workers = []
    with JobStore.open(f"sqlite:///{tmp_path / 'jobs.db'}") as store:
        try:
            with served(lambda: stage_server(CONVERTER, store, workers)) as (converter, converter_url), \
                    served(lambda: stage_server(BUILDER, store, workers)) as (builder, builder_url):
                with Client(converter, timeout=WAIT) as convert, Client(builder, timeout=WAIT) as build:
                    convert.submit_convert(str(tiny_model_dir), str(tmp_path / "ckpt"), dtype="float32").wait()
                    build.submit_build(str(tmp_path / "ckpt"), str(tmp_path / "engine"), max_seq_len=256).wait()
                    build.list_jobs()
                converted, built = scrape(converter_url), scrape(builder_url)
        finally:
            for worker, thread in workers:
                worker.stop()
                thread.join(WAIT)
    for samples, kind, service, method in ((converted, "convert", "dbrx.serve.v1.ConverterService", "SubmitConvert"),
                                           (built, "build", "dbrx.serve.v1.BuilderService", "SubmitBuild")):
        assert calls(samples, service, method) == (1, 1)
        assert value(samples, "dbrx:jobs", kind=kind, state="SUCCEEDED") == 1
        assert value(samples, "dbrx:jobs", kind=kind, state="RUNNING") == 0
        assert value(samples, "dbrx:job_duration_seconds_count", kind=kind, state="SUCCEEDED") == 1
        assert calls(samples, "dbrx.serve.v1.JobService", "WatchJob") == (1, 1)
    assert calls(built, "dbrx.serve.v1.JobService", "ListJobs") == (1, 1)
