"""The shared gRPC plumbing: error mapping, health, reflection (v1 and v1alpha), bearer auth,
auth on by default beyond loopback, the message-size limit, on a real server."""

import asyncio
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from dbrx_serve.shared import rpc
from dbrx_serve.shared.errors import CapacityExhausted, InvalidInput, NotFound
from dbrx_serve.shared.generated.dbrx.serve.v1 import tokenizer_pb2 as pb, tokenizer_pb2_grpc as pb_grpc

NAME = "dbrx.serve.v1.TokenizerService"


class Raising(pb_grpc.TokenizerServiceServicer):
    """A servicer whose Encode raises the error named by the first text."""

    ERRORS = {"invalid": InvalidInput("bad text"), "missing": NotFound("no such thing"),
              "full": CapacityExhausted("queue full"), "bug": RuntimeError("boom"),
              "long": InvalidInput("bad text: " + "x" * 20_000)}

    async def Encode(self, request, context):
        if request.texts[0] in self.ERRORS:
            raise self.ERRORS[request.texts[0]]
        return pb.EncodeResponse(results=[pb.TokenIds(ids=[len(t)]) for t in request.texts])


def run(coro):
    return asyncio.run(coro)


async def with_server(config, body):
    server, port = rpc.build_server([rpc.Servicer(pb_grpc.add_TokenizerServiceServicer_to_server, Raising(), NAME)],
                                    config)
    await rpc.start(server)
    try:
        return await body(f"127.0.0.1:{port}")
    finally:
        await server.stop(None)


@pytest.mark.parametrize("text,code", [("invalid", grpc.StatusCode.INVALID_ARGUMENT),
                                       ("missing", grpc.StatusCode.NOT_FOUND),
                                       ("full", grpc.StatusCode.RESOURCE_EXHAUSTED),
                                       ("bug", grpc.StatusCode.INTERNAL)])
def test_domain_errors_map_to_status_codes(text, code):
    async def body(target):
        async with grpc.aio.insecure_channel(target) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.TokenizerServiceStub(ch).Encode(pb.EncodeRequest(texts=[text]))
            return err.value
    error = run(with_server(rpc.ServerConfig(), body))
    assert error.code() == code
    assert error.details()


def reflection_call(channel, service: str, request: reflection_pb2.ServerReflectionRequest):
    """One request on `service`'s ServerReflectionInfo stream (v1 and v1alpha have the same messages)."""
    info = channel.stream_stream(f"/{service}/ServerReflectionInfo",
                                 request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    return info(iter([request]))


@pytest.mark.parametrize("service", ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"])
def test_health_and_reflection_v1_and_v1alpha_are_served(service):
    async def body(target):
        async with grpc.aio.insecure_channel(target) as ch:
            status = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=NAME))
            listed = reflection_call(ch, service, reflection_pb2.ServerReflectionRequest(list_services=""))
            services = [s.name async for r in listed for s in r.list_services_response.service]
            described = reflection_call(ch, service, reflection_pb2.ServerReflectionRequest(file_containing_symbol=NAME))
            files = [f async for r in described for f in r.file_descriptor_response.file_descriptor_proto]
            return status.status, services, files
    status, services, files = run(with_server(rpc.ServerConfig(auth_token="s3cret"), body))  # open without it
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert {NAME, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= set(services)
    assert any(b"TokenizerService" in f for f in files)


def test_health_watch_streams_through_the_error_mapping():
    """grpc's Watch writes with context.write instead of yielding: the mapping must pass it through."""
    async def body(target):
        async with grpc.aio.insecure_channel(target) as ch:
            watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=NAME))
            first = (await watch.read()).status
            watch.cancel()
            return first
    assert run(with_server(rpc.ServerConfig(), body)) == health_pb2.HealthCheckResponse.SERVING


def test_bearer_token_is_required_when_configured():
    async def body(target):
        request = pb.EncodeRequest(texts=["abc"])
        async with grpc.aio.insecure_channel(target) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.TokenizerServiceStub(ch).Encode(request)
            health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        async with rpc.channel(target, auth_token="s3cret") as ch:
            ok = await pb_grpc.TokenizerServiceStub(ch).Encode(request)
        return err.value.code(), health.status, list(ok.results[0].ids)
    code, health_status, ids = run(with_server(rpc.ServerConfig(auth_token="s3cret"), body))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert health_status == health_pb2.HealthCheckResponse.SERVING
    assert ids == [3]


def test_tls_needs_both_files():
    with pytest.raises(InvalidInput, match="both"):
        rpc.ServerConfig(tls_cert="cert.pem")


def test_a_long_message_is_cut_so_that_the_client_still_sees_it():
    """The message travels in a header: over 8 KiB the client would see RESOURCE_EXHAUSTED instead."""
    async def body(target):
        async with grpc.aio.insecure_channel(target) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.TokenizerServiceStub(ch).Encode(pb.EncodeRequest(texts=["long"]))
            return err.value
    error = run(with_server(rpc.ServerConfig(), body))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("bad text: xxx") and "[... 19" in error.details()
    assert len(error.details()) < 1100


def test_a_request_over_the_message_limit_is_resource_exhausted_and_the_server_goes_on():
    async def body(target):
        async with grpc.aio.insecure_channel(target) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.TokenizerServiceStub(ch).Encode(pb.EncodeRequest(texts=["x" * (3 << 19)]))  # 1.5 MiB
            ok = await pb_grpc.TokenizerServiceStub(ch).Encode(pb.EncodeRequest(texts=["x" * (1 << 19)]))
            return err.value.code(), list(ok.results[0].ids)
    code, ids = run(with_server(rpc.ServerConfig(max_message_mb=1), body))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ids == [1 << 19]


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.8.9.1", True), ("localhost", True),
                                           ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("::", False),
                                           ("", False), ("10.1.2.3", False), ("example.com", False)])
def test_only_loopback_hosts_count_as_loopback(host, loopback):
    assert rpc.is_loopback(host) == loopback


def test_a_host_beyond_loopback_needs_a_token_or_client_certificates_or_insecure(caplog):
    with pytest.raises(InvalidInput, match="--host 0.0.0.0 is reachable from other machines.*--auth_token TOKEN "
                                           r"\(or --tls_client_ca PEM\), or --insecure"):
        rpc.ServerConfig(host="0.0.0.0")
    rpc.ServerConfig(host="0.0.0.0", auth_token="s3cret")
    rpc.ServerConfig(host="0.0.0.0", tls_cert="c.pem", tls_key="k.pem", tls_client_ca="ca.pem")
    insecure = rpc.ServerConfig(host="0.0.0.0", insecure=True)
    with caplog.at_level(logging.WARNING, "dbrx_serve.rpc"):
        rpc.warn_if_open(insecure.host, None, insecure.insecure)
        rpc.warn_if_open("127.0.0.1", None, False)
    assert [r.getMessage() for r in caplog.records] == [
        "--insecure: listening on 0.0.0.0 without authentication; anyone who reaches it can call it"]


def test_mutual_tls_needs_the_servers_own_certificate():
    with pytest.raises(InvalidInput, match="--tls_client_ca .* needs the server's own --tls_cert and --tls_key"):
        rpc.ServerConfig(tls_client_ca="ca.pem")
