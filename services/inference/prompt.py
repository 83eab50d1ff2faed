"""What a request asks the model to continue -- text, token ids or chat
messages -- made into checked token ids. Pure (tokenizer and limits only), so
the gRPC servicer runs it in a worker thread, off the event loop and off the
engine's stepping thread.

A text is refused before it is encoded when it cannot fit: every token holds
at most `max_token_bytes` bytes and every character at least one, so a text of
more than max_input_len * max_token_bytes characters has more than
max_input_len tokens."""

from dataclasses import dataclass
from typing import Sequence

from dbrx_serve.services.tokenizer.chat import ChatMessage, as_message
from dbrx_serve.shared.errors import InvalidInput


@dataclass(frozen=True)
class Chat:
    """Messages rendered with the tokenizer's chat template and the assistant's generation prompt."""

    messages: tuple[ChatMessage, ...]

    def __post_init__(self):
        object.__setattr__(self, "messages", tuple(as_message(m) for m in self.messages))

    @property
    def num_chars(self) -> int:
        return sum(len(m.role) + len(m.content) for m in self.messages)


Prompt = str | Sequence[int] | Chat


class PromptEncoder:
    def __init__(self, tokenizer, vocab_size: int, max_input_len: int):
        self.tokenizer, self.vocab_size, self.max_input_len = tokenizer, vocab_size, max_input_len

    def ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, (str, Chat)):
            return self.encode(prompt)
        return self.checked(list(prompt))

    def encode(self, prompt: str | Chat) -> list[int]:
        if self.tokenizer is None:
            raise InvalidInput("this engine has no tokenizer/: give token ids, not text or messages "
                               "(or load it with a tokenizer directory)")
        self.check_length(len(prompt) if isinstance(prompt, str) else prompt.num_chars)
        if isinstance(prompt, str):
            return self.checked(self.tokenizer.encode_text(prompt))
        return self.checked(self.tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=True))

    def check_length(self, num_chars: int) -> None:
        if num_chars > self.max_chars:
            raise InvalidInput(f"the prompt has {num_chars} characters, more than can fit in the engine's "
                               f"max_input_len of {self.max_input_len} tokens: shorten it")

    @property
    def max_chars(self) -> int:
        return self.max_input_len * self.tokenizer.max_token_bytes

    def checked(self, ids: list[int]) -> list[int]:
        if not ids:
            raise InvalidInput("the prompt is empty: give at least one token")
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.vocab_size]
        if bad:
            raise InvalidInput(f"prompt id {bad[0]!r} is outside the vocabulary 0..{self.vocab_size - 1}")
        return ids
