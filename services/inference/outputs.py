"""What the engine hands back: a step's output per request (what a stream
sends), a finished request's result, and the engine's stats."""

from dataclasses import dataclass

from .stop import FinishReason


@dataclass(frozen=True)
class StepOutput:
    """One request's news from one step: new ids (an end id that finishes adds none), text delta,
    their logprobs (when asked), and the finish reason on the request's last output."""

    request_id: str
    token_ids: tuple[int, ...]
    text_delta: str
    logprobs: tuple[float, ...] = ()
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class Result:
    request_id: str
    prompt_ids: tuple[int, ...]
    output_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason
    logprobs: tuple[float, ...] = ()


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    kv_blocks_used: int
    kv_blocks_free: int
    kv_blocks_total: int
    num_admitted: int = 0  # requests that ever reached their prefill, since the engine started
    num_expired: int = 0  # requests ended by their deadline, since the engine started
