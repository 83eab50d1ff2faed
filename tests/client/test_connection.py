"""The SDK's connection: bearer-token auth (a call without the token is a typed
UNAUTHENTICATED), TLS with a self-signed certificate made here, mutual TLS (the SDK and
rpc.channel with a client certificate), and retries on UNAVAILABLE for idempotent calls only."""

import asyncio
import socket
import threading

import grpc
import pytest

from dbrx_serve.client import AsyncClient, Client, RetryPolicy, Unauthenticated, Unavailable
from dbrx_serve.services.tokenizer.server import build_server as build_tokenizer_server
from dbrx_serve.shared import rpc
from dbrx_serve.shared.generated.dbrx.serve.v1 import tokenizer_pb2 as pb, tokenizer_pb2_grpc as pb_grpc

from tests.serving import served_in_thread
from tests.tls import self_signed

from .conftest import tokenizer_config

WAIT = 60
TOKEN = "s3cret-token"


def tokenizer_server(engine_dir, **server):
    return served_in_thread(lambda: build_tokenizer_server(tokenizer_config(engine_dir("fp32"),
                                                                            rpc.ServerConfig(**server))))


def test_without_the_token_a_call_raises_unauthenticated_sync_and_async(engine_dir):
    with tokenizer_server(engine_dir, auth_token=TOKEN) as address:
        with Client(address, timeout=WAIT) as anonymous, pytest.raises(Unauthenticated) as refused:
            anonymous.encode(["Hi"])
        with Client(address, auth_token=TOKEN, timeout=WAIT) as client:
            assert client.encode(["Hi"])[0]

        async def calls():
            async with AsyncClient(address, timeout=WAIT) as anonymous:
                with pytest.raises(Unauthenticated) as async_refused:
                    await anonymous.tokenizer_info()
            async with AsyncClient(address, auth_token=TOKEN, timeout=WAIT) as client:
                return async_refused.value, await client.tokenizer_info()
        async_refused, info = asyncio.run(calls())
    assert refused.value.code == async_refused.code == grpc.StatusCode.UNAUTHENTICATED
    assert "bearer token" in refused.value.details and info.eos_id == 100257


def test_tls_with_a_self_signed_certificate_sync_and_async(engine_dir, tmp_path):
    cert, key = self_signed(tmp_path)
    with tokenizer_server(engine_dir, tls_cert=cert, tls_key=key, auth_token=TOKEN) as address:
        target = f"localhost:{address.rsplit(':', 1)[1]}"
        with Client(target, tls_ca=cert, auth_token=TOKEN, timeout=WAIT) as client:
            ids = client.encode(["Hello world"])

        async def call():
            async with AsyncClient(target, tls_ca=open(cert, "rb").read(), auth_token=TOKEN, timeout=WAIT) as client:
                return await client.decode(ids)
        assert asyncio.run(call()) == ["Hello world"]
        with Client(target, timeout=5, retry=RetryPolicy(max_attempts=1)) as plaintext, pytest.raises(Unavailable):
            plaintext.encode(["Hello world"])  # a plaintext client cannot talk to a TLS server


def test_mutual_tls_needs_a_client_certificate_the_ca_signed_sdk_and_rpc_channel(engine_dir, tmp_path):
    """--tls_client_ca: the SDK (sync) and rpc.channel (asyncio, as the gateway's) get through with the
    client certificate; without one, or with one the CA did not sign, the handshake fails."""
    cert, key = self_signed(tmp_path, "server-")
    client_cert, client_key = self_signed(tmp_path, "client-")
    stranger_cert, stranger_key = self_signed(tmp_path, "stranger-")
    with tokenizer_server(engine_dir, tls_cert=cert, tls_key=key, tls_client_ca=client_cert) as address:
        target = f"localhost:{address.rsplit(':', 1)[1]}"
        with Client(target, tls_ca=cert, tls_client_cert=client_cert, tls_client_key=client_key, timeout=WAIT) as ok:
            ids = ok.encode(["Hello world"])
        for identity in ({}, {"tls_client_cert": stranger_cert, "tls_client_key": stranger_key}):
            with Client(target, tls_ca=cert, timeout=5, retry=RetryPolicy(max_attempts=1), **identity) as refused:
                with pytest.raises(Unavailable):
                    refused.encode(["Hello world"])

        async def call(**identity):
            async with rpc.channel(target, tls_ca=cert, **identity) as channel:
                request = pb.DecodeRequest(sequences=[pb.TokenIds(ids=ids[0])])
                return (await pb_grpc.TokenizerServiceStub(channel).Decode(request, timeout=WAIT)).texts
        assert asyncio.run(call(tls_client_cert=client_cert, tls_client_key=client_key)) == ["Hello world"]
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            asyncio.run(call())
    assert anonymous.value.code() == grpc.StatusCode.UNAVAILABLE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_idempotent_call_is_retried_until_the_server_comes_up(engine_dir):
    """The server starts only once the waiting call's channel has failed to connect."""
    port = free_port()
    patient = RetryPolicy(max_attempts=100, initial_backoff=0.05, max_backoff=0.2)
    answers, failed_once = [], threading.Event()
    with Client(f"127.0.0.1:{port}", timeout=WAIT, retry=patient) as client:
        client.channel.subscribe(lambda state: state == grpc.ChannelConnectivity.TRANSIENT_FAILURE
                                 and failed_once.set())
        caller = threading.Thread(target=lambda: answers.append(client.tokenizer_info()))
        caller.start()
        assert failed_once.wait(WAIT)
        with pytest.raises(Unavailable) as refused:
            client.generate("Hi", max_new_tokens=1)  # never retried: not idempotent
        with tokenizer_server(engine_dir, port=port):
            caller.join(WAIT)
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE and answers[0].eos_id == 100257
