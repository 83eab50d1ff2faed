"""The shared gRPC plumbing: error mapping, health, reflection, bearer auth, on a real server."""

import asyncio

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


def test_health_and_reflection_are_served():
    async def body(target):
        async with grpc.aio.insecure_channel(target) as ch:
            status = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=NAME))
            stream = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            services = [s.name async for r in stream for s in r.list_services_response.service]
            return status.status, services
    status, services = run(with_server(rpc.ServerConfig(), body))
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert NAME in services and "grpc.health.v1.Health" in services


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
