"""Typed errors <-> gRPC status codes, both ways, in one place: servers abort with the
code of the error they raised (shared/rpc.py); clients (the SDK, the `dbrx` command, the
gateway) raise the error type a failed call's code stands for, with the code and the
server's message. Imports grpc and shared/errors.py only, so the client SDK can use it."""

import grpc

from .errors import (BadState, CapacityExhausted, Cancelled, DbrxServeError, DeadlineExceeded, InvalidInput,
                     NotFound, Unauthenticated, Unavailable)

STATUS_OF_ERROR: dict[type[DbrxServeError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    BadState: grpc.StatusCode.FAILED_PRECONDITION,
    CapacityExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Cancelled: grpc.StatusCode.CANCELLED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,  # EngineFailed too: the engine stopped, never INTERNAL
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}
ERROR_OF_STATUS = {code: kind for kind, code in STATUS_OF_ERROR.items()}


def status_of(error: BaseException) -> grpc.StatusCode | None:
    for kind, code in STATUS_OF_ERROR.items():
        if isinstance(error, kind):
            return code
    return None


def typed_error(error: grpc.RpcError) -> DbrxServeError:
    """A client's view of a failed call: the typed error its status code stands for (DbrxServeError
    for codes no domain error maps to), the code's name before the details; `.code` and
    `.details` hold them apart."""
    code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]  # every call error has one
    details: str = error.details() or ""  # type: ignore[attr-defined]
    typed = ERROR_OF_STATUS.get(code, DbrxServeError)(f"{code.name.lower()}: {details}")
    typed.code, typed.details = code, details
    return typed
