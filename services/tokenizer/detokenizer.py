"""Streaming text from ids, one id at a time (docs/tokenizer.md section 6).

One incremental UTF-8 decoder per sequence holds back the (at most 3) bytes of
a character split across tokens, so no delta ever holds half a character, and
the deltas concatenate to exactly the one-shot decode, U+FFFD included."""

import codecs
from typing import Callable


class IncrementalDetokenizer:
    """Feed ids with `push`; each returns the text it completes (maybe ""). Call
    `finish` once at the end for what an incomplete last character leaves."""

    def __init__(self, token_bytes: Callable[[int], bytes]):
        self.token_bytes = token_bytes
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self.decoder.decode(self.token_bytes(token_id))

    def push_many(self, token_ids) -> str:
        return self.decoder.decode(b"".join(map(self.token_bytes, token_ids)))

    def finish(self) -> str:
        return self.decoder.decode(b"", final=True)
