"""Typed domain errors. Each server maps them to a gRPC status in one place
(`shared.rpc`); anything else becomes INTERNAL and is logged."""


class DbrxServeError(Exception):
    """Base of the errors a person can act on; the message says what to fix."""


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


class Unavailable(DbrxServeError):
    """The service cannot take work now (loading, draining, stopped): UNAVAILABLE; retry elsewhere or later."""


class EngineFailed(Unavailable, RuntimeError):
    """The engine could not go on with this request: a step failed, or the engine stopped."""
