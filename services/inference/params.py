"""What one request asks of the sampler and the stop conditions, validated when made.

`temperature == 0` or `top_k == 1` is greedy. `top_k == 0` turns top-k off;
`top_p` lies in (0, 1] and 1 turns it off (run.py and the proto use 0 for
"off": their edges map 0 to 1 before building SamplingParams)."""

import math
from dataclasses import dataclass

from dbrx_serve.shared.errors import InvalidInput

MAX_SEED = 2**64 - 1


MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256
MAX_END_IDS = 64


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    end_id: tuple[int, ...] | None = None  # replaces the tokenizer's stop ids when given
    return_logprobs: bool = False
    skip_special_tokens: bool = False

    def __post_init__(self):
        _check_int("max_new_tokens", self.max_new_tokens, 1)
        _check_int("top_k", self.top_k, 0)
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature < math.inf:
            raise InvalidInput(f"temperature must be >= 0 and finite (0 is greedy), got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise InvalidInput(f"top_p must lie in (0, 1] (1 turns it off), got {self.top_p!r}")
        if self.seed is not None:
            _check_int("seed", self.seed, 0, MAX_SEED)
        object.__setattr__(self, "stop", _stop_strings(self.stop))
        if self.end_id is not None:
            object.__setattr__(self, "end_id", _end_ids(self.end_id))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"an integer >= {low}"
        raise InvalidInput(f"{name} must be {bound}, got {value!r}")


def _stop_strings(stop) -> tuple[str, ...]:
    """Bounded, since each new token is checked against every stop string's prefixes."""
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if not all(isinstance(s, str) and s for s in stop):
        raise InvalidInput(f"stop strings must be non-empty strings, got {stop!r}")
    if len(stop) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_LENGTH for s in stop):
        raise InvalidInput(f"give at most {MAX_STOP_STRINGS} stop strings of at most {MAX_STOP_LENGTH} "
                           f"characters each (got {len(stop)}, the longest {max(map(len, stop))})")
    return stop


def _end_ids(end_id) -> tuple[int, ...]:
    ids = (end_id,) if isinstance(end_id, int) else tuple(end_id)
    if len(ids) > MAX_END_IDS:
        raise InvalidInput(f"give at most {MAX_END_IDS} end ids, got {len(ids)}")
    for i in ids:
        _check_int("end_id", i, 0)
    return ids
