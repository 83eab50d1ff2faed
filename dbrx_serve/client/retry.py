"""Retries with exponential backoff, only on UNAVAILABLE (the server is down, restarting,
loading or draining: nothing was done) and only for calls that are safe to repeat: reads,
cancels, job submits (they carry an idempotency key) and WatchJob (it resumes after the last
event seen). Generate and GenerateStream are never retried."""

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

import grpc

from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.status import typed_error

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """max_attempts: tries in all (1: no retry). The n-th wait is initial_backoff * multiplier**n,
    at most max_backoff, with up to 20% jitter."""

    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise InvalidInput(f"a retry policy needs max_attempts >= 1, backoffs >= 0, multiplier >= 1: {self}")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        seconds = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return seconds * random.uniform(0.8, 1.0)

    def should_retry(self, error: grpc.RpcError, attempt: int) -> bool:
        return retryable(error) and attempt < self.max_attempts


def retryable(error: grpc.RpcError) -> bool:
    return error.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def call(policy: RetryPolicy, attempt_once: Callable[[], T], idempotent: bool) -> T:
    """`attempt_once()` until it succeeds, retried on UNAVAILABLE when `idempotent`; a final
    failure raised as its typed error."""
    attempt = 1
    while True:
        try:
            return attempt_once()
        except grpc.RpcError as error:
            if not (idempotent and policy.should_retry(error, attempt)):
                raise typed_error(error) from None
        time.sleep(policy.backoff(attempt))
        attempt += 1


async def call_async(policy: RetryPolicy, attempt_once: Callable[[], Awaitable[T]], idempotent: bool) -> T:
    """`call` for asyncio."""
    attempt = 1
    while True:
        try:
            return await attempt_once()
        except grpc.RpcError as error:
            if not (idempotent and policy.should_retry(error, attempt)):
                raise typed_error(error) from None
        await asyncio.sleep(policy.backoff(attempt))
        attempt += 1
