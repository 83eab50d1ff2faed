"""Services for the gateway's tests: the tiny fp32 engine behind a real inference server, a real
tokenizer server on its tokenizer/, and a gateway over both (an API key required), shared by the
tests that leave them as they found them."""

from dataclasses import dataclass

import pytest

from dbrx_serve.services.gateway.config import GatewayConfig
from dbrx_serve.services.tokenizer.config import TokenizerServiceConfig
from dbrx_serve.services.tokenizer.server import build_server as build_tokenizer_server

from tests.serving import served_in_thread
from tests.services.inference.conftest import (  # noqa: F401 (fixtures)
    banned, engine_dir, engine_dirs, fp32_engine, one_thread, reference_model)
from tests.services.inference.served import Served, inference_server

from .served import API_KEY, gateway_server


@dataclass
class Stack:
    url: str  # the gateway
    inference: Served
    tokenizer: str  # the tokenizer server's address


@pytest.fixture(scope="session")
def tokenizer_address(engine_dir):
    config = TokenizerServiceConfig(str(engine_dir("fp32") / "tokenizer"), num_threads=1)
    with served_in_thread(lambda: build_tokenizer_server(config)) as address:
        yield address


@pytest.fixture(scope="session")
def stack(engine_dir, tokenizer_address):
    with inference_server(engine_dir("fp32")) as served:
        config = GatewayConfig(inference=(served.address,), tokenizer=tokenizer_address, api_key=API_KEY)
        with gateway_server(config) as url:
            yield Stack(url, served, tokenizer_address)
