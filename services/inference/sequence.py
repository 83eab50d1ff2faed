"""One request as the engine carries it: its ids, sampling params, state,
block table, output so far and why it finished."""

from dataclasses import dataclass, field
from enum import Enum

from .params import SamplingParams
from .stop import FinishReason, StopChecker


PENDING = -1  # an output id sampled on the device and not yet read (the engine's lookahead: engine.py)


class SequenceState(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    stop: StopChecker
    seed: int = 0  # per request: same seed, same tokens, whatever the batch (sampler.py)
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose K/V are in the cache
    state: SequenceState = SequenceState.WAITING
    finish_reason: FinishReason | None = None
    deadline: float | None = None  # time.monotonic(); past it the request is ended (Engine.expire)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def max_tokens(self) -> int:
        """Tokens this sequence may ever hold in the cache (the last sampled one is never cached)."""
        return len(self.prompt_ids) + self.params.max_new_tokens - 1

    @property
    def num_pending(self) -> int:
        """Tokens not yet in the cache: the rest of the prompt, or the last sampled token."""
        return self.num_tokens - self.num_computed

    def token_ids(self, start: int, stop: int) -> list[int]:
        n = len(self.prompt_ids)
        return self.prompt_ids[start:stop] + self.output_ids[max(start - n, 0):max(stop - n, 0)]

    @property
    def is_finished(self) -> bool:
        return self.state is SequenceState.FINISHED

    @property
    def text(self) -> str:
        return self.stop.text
