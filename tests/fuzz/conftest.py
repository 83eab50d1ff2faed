"""The servers the fuzz tests attack, one of each for the whole module, as the other tests start
them: the tokenizer server on the tiny engine's tokenizer/, converter and builder servers over one
SQLite job store with no worker (a valid submit only queues a job), and the inference server on
the tiny fp32 engine (tests/services/inference/served.py)."""

from dataclasses import dataclass

import pytest

from dbrx_serve.client import Client
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
class Targets:
    addresses: dict[str, str]  # server name -> HOST:PORT
    job_id: str  # a real job (ended): JobService requests start from it


def ended_job(converter: str, root) -> str:
    """A job queued then cancelled: GetJob, CancelJob and WatchJob find it, and a watch of it ends."""
    with Client(converter, timeout=60) as client:
        job = client.submit_convert(str(root / "model"), str(root / "out"))
        client.cancel_job(job.id)
    return job.id


@pytest.fixture(scope="module")
def targets(engine_dir, tmp_path_factory):
    engine, root = engine_dir("fp32"), tmp_path_factory.mktemp("fuzz")
    tokenizer = TokenizerServiceConfig(str(engine / "tokenizer"), num_threads=1)
    with JobStore.open(f"sqlite:///{root / 'jobs.db'}") as store:
        with (served_in_thread(lambda: build_tokenizer_server(tokenizer)) as tokenizer_address,
              served_in_thread(lambda: job_stage.build_server(CONVERTER, store, rpc.ServerConfig())) as converter,
              served_in_thread(lambda: job_stage.build_server(BUILDER, store, rpc.ServerConfig())) as builder,
              inference_server(engine) as inference):
            yield Targets({"tokenizer": tokenizer_address, "converter": converter, "builder": builder,
                           "inference": inference.address}, ended_job(converter, root))
