"""When a sequence ends, and the text it shows: end ids, max_new_tokens, and
stop strings matched on the detokenized text across token boundaries.

Text comes from an incremental detokenizer (docs/tokenizer.md section 6).
While stop strings are set, the tail of the text that could still begin one
is held back, so no delta ever shows text a stop string later cuts; the text
ends exactly before the first stop string found."""

from enum import Enum
from dbrx_serve.services.tokenizer.detokenizer import IncrementalDetokenizer


class FinishReason(Enum):
    LENGTH = "length"  # max_new_tokens (or max_seq_len)
    END_ID = "end_id"
    STOP = "stop"  # a stop string
    CANCELLED = "cancelled"
    DEADLINE = "deadline"  # its deadline passed (Engine.expire)

def held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a stop string."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest

class StopChecker:
    """Per sequence: `push(token)` -> (text delta, finish reason or None)."""

    def __init__(self, end_ids: tuple[int, ...], max_new_tokens: int, stops: tuple[str, ...] = (),
                 detokenizer: IncrementalDetokenizer | None = None):
        self.end_ids, self.max_new_tokens, self.stops = frozenset(end_ids), max_new_tokens, stops
        self.detokenizer = detokenizer
        self.text, self.emitted, self.num_tokens = "", 0, 0

    def push(self, token: int) -> tuple[str, FinishReason | None]:
        self.num_tokens += 1
        if token in self.end_ids:
            return self.finish(FinishReason.END_ID)
        self.text += self.detokenizer.push(token) if self.detokenizer else ""
        if self.stops and (cut := self.stop_at()) is not None:
            self.text = self.text[:cut]
            return self.finish(FinishReason.STOP, flush=False)
        if self.num_tokens >= self.max_new_tokens:
            return self.finish(FinishReason.LENGTH)
        return self.delta(len(self.text) - held_back(self.text, self.stops)), None

    def stop_at(self) -> int | None:
        """Where the first stop string starts, searching only where a new one can be."""
        start = max(0, self.emitted - max(map(len, self.stops)))
        found = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        return min(found) if found else None

    def finish(self, reason: FinishReason, flush: bool = True) -> tuple[str, FinishReason]:
        if flush and self.detokenizer:
            self.text += self.detokenizer.finish()
        return self.delta(len(self.text)), reason

    def delta(self, upto: int) -> str:
        out, self.emitted = self.text[self.emitted:upto], max(self.emitted, upto)
        return out
