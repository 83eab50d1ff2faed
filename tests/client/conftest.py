"""Real servers on localhost for the SDK's tests: a tokenizer server on the tiny engine's
tokenizer/, converter and builder servers over one SQLite job store with a worker thread each,
and an inference server on the tiny fp32 engine (tests/services/inference/served.py)."""

from dataclasses import dataclass

import pytest

from dbrx_serve.services.builder.stage import BUILDER
from dbrx_serve.services.converter.stage import CONVERTER
from dbrx_serve.services.tokenizer.config import TokenizerServiceConfig
from dbrx_serve.services.tokenizer.server import build_server as build_tokenizer_server
from dbrx_serve.shared import job_stage, rpc
from dbrx_serve.shared.jobstore import JobStore

from tests.serving import served_in_thread
from tests.services.inference.conftest import engine_dir, engine_dirs, one_thread  # noqa: F401 (fixtures)
from tests.services.inference.served import inference_server


@dataclass
class Servers:
    tokenizer: str
    converter: str
    builder: str
    inference: str
    store: JobStore


def tokenizer_config(engine, server: rpc.ServerConfig = rpc.ServerConfig()) -> TokenizerServiceConfig:
    return TokenizerServiceConfig(str(engine / "tokenizer"), num_threads=1, server=server)


@pytest.fixture(scope="session")
def servers(engine_dir, tmp_path_factory):
    engine = engine_dir("fp32")
    with JobStore.open(f"sqlite:///{tmp_path_factory.mktemp('sdk-store') / 'jobs.db'}") as store:
        workers = [stage.worker(store, poll_seconds=0.1) for stage in (CONVERTER, BUILDER)]
        threads = [job_stage.start_worker_thread(w, f"sdk-test-worker-{i}") for i, w in enumerate(workers)]
        try:
            with (served_in_thread(lambda: build_tokenizer_server(tokenizer_config(engine))) as tokenizer,
                  served_in_thread(lambda: job_stage.build_server(CONVERTER, store, rpc.ServerConfig())) as converter,
                  served_in_thread(lambda: job_stage.build_server(BUILDER, store, rpc.ServerConfig())) as builder,
                  inference_server(engine) as inference):
                yield Servers(tokenizer, converter, builder, inference.address, store)
        finally:
            for worker, thread in zip(workers, threads):
                worker.stop()
                thread.join()
