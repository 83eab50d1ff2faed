"""One mapping from errors to OpenAI's error shape,

    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}

with the HTTP status for each typed error: the domain errors of
shared/errors.py (the gRPC services' status codes come back as those), plus
the few only HTTP has. Anything else is a 500, logged."""

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from dbrx_serve.shared.errors import (
    BadState, CapacityExhausted, DbrxServeError, InvalidInput, NotFound, Unavailable, cut)

log = logging.getLogger("dbrx_serve.gateway")
MAX_MESSAGE = 1000


class BadParameter(InvalidInput):
    """A request parameter we refuse: 400 naming it."""

    def __init__(self, message: str, param: str | None):
        super().__init__(message)
        self.param = param


class Unauthorized(DbrxServeError):
    """No bearer token, or the wrong one: 401."""


class BodyTooLarge(DbrxServeError):
    """413."""


class NotConfigured(DbrxServeError):
    """An endpoint this gateway was started without the service for: 501."""


class ClientGone(DbrxServeError):
    """The HTTP client left before its answer was ready: 499 (nobody reads it; the metrics do)."""


# (status, OpenAI's error type, code); the first class that matches wins.
STATUS_OF_ERROR = (
    (ClientGone, 499, "invalid_request_error", None),
    (Unauthorized, 401, "invalid_request_error", "invalid_api_key"),
    (NotFound, 404, "invalid_request_error", "model_not_found"),
    (BodyTooLarge, 413, "invalid_request_error", "request_too_large"),
    (InvalidInput, 400, "invalid_request_error", None),
    (BadState, 400, "invalid_request_error", None),
    (CapacityExhausted, 429, "server_busy", None),
    (NotConfigured, 501, "invalid_request_error", None),
    (Unavailable, 503, "service_unavailable", None),
    (DbrxServeError, 502, "server_error", None),  # the inference service failed in another way
)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": cut(message, MAX_MESSAGE), "type": kind, "param": param, "code": code}}


def status_and_body(error: Exception) -> tuple[int, dict]:
    for cls, status, kind, code in STATUS_OF_ERROR:
        if isinstance(error, cls):
            return status, error_body(str(error), kind, getattr(error, "param", None), code)
    log.error("internal error", exc_info=error)
    return 500, error_body(f"internal error: {type(error).__name__}: {error}", "server_error")


async def typed_error_response(request: Request, error: Exception) -> JSONResponse:
    status, body = status_and_body(error)
    return JSONResponse(body, status_code=status)


async def http_error_response(request: Request, error: HTTPException) -> JSONResponse:
    """Starlette's own errors (an unknown path, a wrong method) in the same shape."""
    return JSONResponse(error_body(str(error.detail), "invalid_request_error"), status_code=error.status_code,
                        headers=getattr(error, "headers", None))


def add_error_handlers(app: FastAPI) -> None:
    """Typed errors are answered where they are raised; anything else reaches Starlette's outer
    error middleware, which answers with the same shape, then logs it."""
    app.add_exception_handler(HTTPException, http_error_response)
    app.add_exception_handler(DbrxServeError, typed_error_response)
    app.add_exception_handler(Exception, typed_error_response)
