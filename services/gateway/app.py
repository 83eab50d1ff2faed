"""The gateway's FastAPI app, `build_app(config)`, apart from serving it
(server.py). Routes are thin: read and parse the body (off the event loop),
one call into `Gateway`, which turns the request into GenerateRequests
(protocol.py), runs them on the inference services (streams.py) and builds
the answer. Errors of every kind leave in OpenAI's shape (errors.py).

    POST /v1/completions, /v1/chat/completions   unary or `stream: true` (SSE)
    GET  /v1/models
    POST /tokenize, /detokenize                   through the tokenizer service
    GET  /health, /version, /metrics              never need the API key
"""

import asyncio
import contextlib
import hmac
import json
import time
from typing import AsyncIterator

import anyio
import grpc
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.requests import ClientDisconnect

import dbrx_serve
from dbrx_serve.shared import rpc
from dbrx_serve.shared.metrics import InferenceMetrics

from . import protocol
from .balancer import CHANNEL_OPTIONS, NONE_SERVING, Balancer
from .config import GatewayConfig
from .errors import (BadParameter, BodyTooLarge, ClientGone, NotConfigured, Unauthorized, add_error_handlers,
                     error_body, status_and_body)
from .streams import Streams, unless_disconnected
from .tokenizer_client import TokenizerClient

MAX_DRAIN_BYTES = 64 * 1024 * 1024  # past the limit a body is read (so the client hears 413) up to this much
MAX_INLINE_PARSE_BYTES = 64 * 1024  # parsed on the event loop (tens of microseconds); larger in a thread
DONE = "data: [DONE]\n\n"


class Gateway:
    """What the routes share: the settings, the inference targets, the tokenizer, the metrics."""

    def __init__(self, config: GatewayConfig):
        self.config = config
        self.balancer = Balancer(config.inference, self.channel)
        self.tokenizer: TokenizerClient | None = None
        self.registry = CollectorRegistry()
        self.metrics = InferenceMetrics(self.registry)
        self.http_requests = Counter("dbrx:http_requests", "HTTP requests by route, method and status.",
                                     ["route", "method", "status"], registry=self.registry)
        self.started = int(time.time())

    async def start(self) -> None:
        await self.balancer.start()
        if self.config.tokenizer is not None:
            self.tokenizer = TokenizerClient(self.channel(self.config.tokenizer))

    def channel(self, target: str) -> grpc.aio.Channel:
        """A channel to a gRPC service, with the token and TLS the services ask of their clients."""
        c = self.config
        return rpc.channel(target, c.auth_token, c.tls_ca, CHANNEL_OPTIONS, c.tls_client_cert, c.tls_client_key)

    async def close(self) -> None:
        await self.balancer.close()
        if self.tokenizer is not None:
            await self.tokenizer.close()

    def needs_tokenizer(self, what: str, param: str | None = None) -> TokenizerClient:
        """The tokenizer client; without one, 400 naming `param` (or 501 for an endpoint)."""
        if self.tokenizer is not None:
            return self.tokenizer
        message = f"{what} needs the tokenizer service: start the gateway with --tokenizer HOST:PORT"
        raise NotConfigured(message) if param is None else BadParameter(message, param)

    # --- generation ---

    async def plan(self, body: protocol.SamplingRequest) -> protocol.Generation:
        protocol.check_model(body.model, self.config.model_name)
        info = self.balancer.model_info
        chat = body.api is protocol.ChatApi
        default = self.chat_max_tokens(info) if chat else protocol.COMPLETION_MAX_TOKENS
        max_tokens = protocol.max_tokens_of(body, default, info.max_seq_len if info else None)
        logprobs = body.wants_logprobs()
        if logprobs and not body.return_tokens_as_token_ids:
            self.needs_tokenizer("logprobs (the text of each token; or ask return_tokens_as_token_ids)", "logprobs")
        return protocol.generation(body, self.config.model_name, max_tokens, await self.end_ids(body), logprobs)

    def chat_max_tokens(self, info) -> int:
        """The configured default, clipped to what any prompt leaves of the engine's max_seq_len."""
        room = info.max_seq_len - info.max_input_len if info is not None else self.config.default_max_tokens
        return max(1, min(self.config.default_max_tokens, room))

    async def end_ids(self, body: protocol.SamplingRequest) -> tuple[int, ...]:
        """() for the model's own stop ids; with stop_token_ids, those ids and the model's."""
        if not body.stop_token_ids:
            return ()
        tokenizer = self.needs_tokenizer("stop_token_ids (to keep the model's own stop ids)", "stop_token_ids")
        return tuple(dict.fromkeys((*await tokenizer.stop_ids(), *body.stop_token_ids)))

    async def answer(self, request: Request, g: protocol.Generation, started: float) -> Response:
        """Run the choices; a disconnected client cancels them (their KV blocks are freed at once)."""
        streams = Streams(self.balancer, self.metrics, g.requests, started)
        try:
            firsts_or_choices = await unless_disconnected(request, streams.firsts() if g.stream else streams.whole())
        except BaseException:
            streams.close()
            raise
        if g.stream:
            return EventStream(self.events(g, streams, firsts_or_choices), streams)
        streams.close()
        return JSONResponse(await self.response(g, firsts_or_choices))

    async def response(self, g: protocol.Generation, choices) -> dict:
        bodies = [g.api.choice(i, c.text, await self.logprobs(g, c.token_ids, c.logprobs, 0),
                               protocol.finish_reason(c.last.finish_reason)) for i, c in enumerate(choices)]
        return protocol.response(g, bodies, self.usage(g, [c.last for c in choices]))

    async def logprobs(self, g: protocol.Generation, ids, logprobs, offset: int) -> dict | None:
        if not g.logprobs:
            return None
        tokens = protocol.token_id_names(ids) if g.tokens_as_ids else await self.tokenizer.token_texts(ids)
        return g.api.logprobs(tokens, list(logprobs), offset)

    @staticmethod
    def usage(g: protocol.Generation, lasts) -> dict:
        """Each prompt counted once (from its first choice), every choice's tokens."""
        prompt = sum(m.usage.prompt_tokens for i, m in enumerate(lasts) if i % g.n == 0)
        return protocol.usage(prompt, sum(m.usage.completion_tokens for m in lasts))

    async def events(self, g: protocol.Generation, streams: Streams, firsts) -> AsyncIterator[str]:
        """The SSE body: role chunks (chat), a chunk per message with text (or tokens, with logprobs),
        each choice's finish, the usage when asked, then [DONE]; an error after the 200 goes as an
        error event."""
        lasts, offsets = [None] * len(firsts), [0] * len(firsts)
        try:
            for first in filter(None, map(g.api.first_chunk_choice, range(len(firsts)))):
                yield sse(protocol.chunk(g, [first]))
            async for i, message in streams.merged(firsts):
                if message.text_delta or message.finish_reason or (g.logprobs and message.token_ids):
                    yield sse(protocol.chunk(g, [await self.chunk_choice(g, i, message, offsets[i])]))
                lasts[i], offsets[i] = message, offsets[i] + len(message.text_delta)
            if g.include_usage:
                yield sse(protocol.chunk(g, [], self.usage(g, lasts)))
        except Exception as error:
            yield sse(status_and_body(error)[1])
        yield DONE

    async def chunk_choice(self, g: protocol.Generation, i: int, message, offset: int) -> dict:
        finish = protocol.finish_reason(message.finish_reason) if message.finish_reason else None
        logprobs = await self.logprobs(g, message.token_ids, message.logprobs, offset)
        return g.api.chunk_choice(i, message.text_delta, logprobs, finish)


class EventStream(StreamingResponse):
    """Server-sent events, stopped as soon as the client disconnects (Starlette listens for that
    only below ASGI 2.4; at 2.4 it waits for a send to fail, which an idle stream never tries),
    and whose gRPC streams are closed once the answer ends, however it ends."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], streams: Streams):
        super().__init__(events, headers={"Cache-Control": "no-cache"})
        self.streams = streams

    async def __call__(self, scope, receive, send):
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self.stream_then_stop, send, group.cancel_scope)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            self.streams.close()

    async def stream_then_stop(self, send, scope: anyio.CancelScope) -> None:
        await self.stream_response(send)
        scope.cancel()


def sse(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"


# --- the HTTP edge ---

def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway


async def require_key(request: Request) -> None:
    """OpenAI's clients send `Authorization: Bearer KEY`."""
    expected = gateway_of(request).config.api_key
    if expected is None:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
        raise Unauthorized("missing or wrong API key: send the header 'Authorization: Bearer <key>'")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or BodyTooLarge past `limit` bytes (read on, unkept, so the client hears the 413)."""
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > limit + MAX_DRAIN_BYTES:
                break
    except ClientDisconnect:
        raise ClientGone("the client left while sending its request") from None
    if size > limit:
        raise BodyTooLarge(f"the request body has more than {limit} bytes (the gateway's --max_request_mb)")
    return b"".join(chunks)


async def parsed_body(request: Request, model: type):
    """Read, then parse (a large body in a worker thread: it never holds the event loop)."""
    body = await read_body(request, gateway_of(request).config.max_request_bytes)
    if len(body) <= MAX_INLINE_PARSE_BYTES:
        return protocol.parsed(model, body)
    return await asyncio.to_thread(protocol.parsed, model, body)


async def generate(request: Request, model: type) -> Response:
    started, gateway = time.perf_counter(), gateway_of(request)
    body = await parsed_body(request, model)
    return await gateway.answer(request, await gateway.plan(body), started)


v1 = APIRouter(dependencies=[Depends(require_key)])
open_routes = APIRouter()


@v1.post("/v1/completions")
async def completions(request: Request):
    return await generate(request, protocol.CompletionRequest)


@v1.post("/v1/chat/completions")
async def chat_completions(request: Request):
    return await generate(request, protocol.ChatRequest)


@v1.get("/v1/models")
async def models(request: Request):
    gateway = gateway_of(request)
    return protocol.models(gateway.config.model_name, gateway.balancer.model_info, gateway.started)


@v1.post("/tokenize")
async def tokenize(request: Request):
    body = await parsed_body(request, protocol.TokenizeRequest)
    gateway = gateway_of(request)
    protocol.check_model(body.model, gateway.config.model_name)
    tokenizer, chat = gateway.needs_tokenizer("/tokenize"), body.chat()
    ids = await (tokenizer.encode(body.prompt) if chat is None else
                 tokenizer.apply_chat_template(chat, body.add_generation_prompt))
    info = gateway.balancer.model_info
    return {"count": len(ids), "max_model_len": info.max_seq_len if info else None, "tokens": ids}


@v1.post("/detokenize")
async def detokenize(request: Request):
    body = await parsed_body(request, protocol.DetokenizeRequest)
    gateway = gateway_of(request)
    protocol.check_model(body.model, gateway.config.model_name)
    return {"prompt": await gateway.needs_tokenizer("/detokenize").decode(body.tokens)}


@open_routes.get("/health")
async def health(request: Request):
    if gateway_of(request).balancer.serving:
        return {"status": "serving"}
    return JSONResponse(error_body(NONE_SERVING, "service_unavailable"), status_code=503)


@open_routes.get("/version")
async def version():
    return {"version": dbrx_serve.__version__}


@open_routes.get("/metrics")
async def metrics(request: Request):
    return Response(generate_latest(gateway_of(request).registry), media_type=CONTENT_TYPE_LATEST)


class CountRequests:
    """ASGI middleware: every HTTP request counted by its route's path (unmatched paths as one),
    method and status, once its answer has ended."""

    def __init__(self, app, counter: Counter):
        self.app, self.counter = app, counter

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.counter.labels(route, scope["method"], str(status[0])).inc()


def build_app(config: GatewayConfig) -> FastAPI:
    """The app; its lifespan opens the channels to the services (and closes them)."""
    gateway = Gateway(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await gateway.start()
        try:
            yield
        finally:
            await gateway.close()

    app = FastAPI(title="dbrx-serve OpenAI-compatible gateway", version=dbrx_serve.__version__, lifespan=lifespan)
    app.state.gateway = gateway
    app.include_router(v1)
    app.include_router(open_routes)
    add_error_handlers(app)
    app.add_middleware(CountRequests, counter=gateway.http_requests)
    return app
