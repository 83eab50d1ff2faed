"""Typed domain errors. Each server maps them to a gRPC status in one place
(`shared.rpc`); anything else becomes INTERNAL and is logged.

A message that repeats a value from a request shows it with `shown`, cut to
MAX_SHOWN characters: a status message travels in a header, and a client
refuses headers over 8 KiB (RESOURCE_EXHAUSTED instead of the message).

A client sees a failed call as the same types (`shared/status.py`), with the
call's `code` (a grpc.StatusCode) and the server's `details` set. This module
imports nothing heavy: the client SDK raises these too."""

from pathlib import PurePath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

MAX_SHOWN = 200  # characters of one value a message repeats


class DbrxServeError(Exception):
    """Base of the errors a person can act on; the message says what to fix. On an error a
    client got from a call, `code` is the call's status and `details` the server's message."""

    code: "grpc.StatusCode | None" = None
    details: str = ""


class InvalidInput(DbrxServeError, ValueError):
    """Bad input: INVALID_ARGUMENT."""


class NotFound(DbrxServeError):
    """A named thing does not exist: NOT_FOUND."""


class BadState(DbrxServeError):
    """The request is valid but the system is not in a state to do it: FAILED_PRECONDITION."""


class CapacityExhausted(DbrxServeError):
    """A queue or the KV cache is full: RESOURCE_EXHAUSTED."""


class Cancelled(DbrxServeError):
    """The work was cancelled: CANCELLED."""


def cut(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters and a marker saying how many were cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}[... {len(text) - limit} more characters]"


def shown(value: object) -> str:
    """A value as a message repeats it: a path as is, anything else as its repr; cut to MAX_SHOWN."""
    return cut(str(value) if isinstance(value, PurePath) else repr(value), MAX_SHOWN)


class Unavailable(DbrxServeError):
    """The service cannot take work now (loading, draining, stopped): UNAVAILABLE; retry elsewhere or later."""


class EngineFailed(Unavailable, RuntimeError):
    """The engine could not go on with this request: a step failed, or the engine stopped."""


class Unauthenticated(DbrxServeError):
    """A missing or wrong bearer token: UNAUTHENTICATED."""


class DeadlineExceeded(DbrxServeError):
    """The call's deadline passed before it ended: DEADLINE_EXCEEDED."""
