"""DBRX's tokenizer as a plain object: encode, decode, chat template, streaming
detokenization and the facts a sampler needs (stop ids, unassigned ids).

No gRPC and no torch here: the inference engine uses it in-process, and the
service is a thin adapter over it."""

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import tiktoken

from dbrx_serve.shared.errors import InvalidInput

from . import loader
from .bpe_file import Ranks
from .chat import AUTO, PROMPT_A, ChatTemplate, Piece, default_system_prompt, render
from .detokenizer import IncrementalDetokenizer
from .vocab import (BOS_ID, CL100K_PAT, DEFAULT_MODEL_VOCAB_SIZE, DEFAULT_STOP_IDS, EOS_ID, IM_END, IM_START,
                    NUM_ID_SLOTS, PAD_ID, SPECIAL_TEXT_OF_ID, SPECIAL_TOKENS, unassigned_mask)


def bytes_table(ranks: Ranks, size: int, with_special: bool) -> list[bytes]:
    """Each id's bytes: BPE bytes, a special token's text (or b"" to skip it), b"" if unassigned."""
    table = [b""] * size
    for token, rank in ranks.items():
        table[rank] = token
    for token_id, text in SPECIAL_TEXT_OF_ID.items():
        table[token_id] = text.encode() if with_special else b""
    return table


def check_text(text: Any, index: int) -> str:
    """Strings must be encodable as UTF-8 (no lone surrogates): tiktoken would silently replace them."""
    if not isinstance(text, str):
        raise InvalidInput(f"text {index} is a {type(text).__name__}, not a string")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise InvalidInput(f"text {index} is not valid UTF-8: a lone surrogate at character "
                               f"{error.start}") from None
    return text


def chunks(items: list, count: int) -> list[list]:
    """`count` contiguous slices of nearly equal length, in order."""
    size, extra = divmod(len(items), count)
    bounds = [i * size + min(i, extra) for i in range(count + 1)]
    return [items[bounds[i]:bounds[i + 1]] for i in range(count) if bounds[i] < bounds[i + 1]]


class Tokenizer:
    """cl100k_base ranks (or a test model's BPE) with DBRX's special tokens.

    `vocab_size` is the tokenizer's id slots (100280); `model_vocab_size` is the
    logits' width from config.json (100352), which bounds the ids decode accepts."""

    def __init__(self, ranks: Ranks, *, source: str = "", model_vocab_size: int = DEFAULT_MODEL_VOCAB_SIZE,
                 stop_ids: Sequence[int] = DEFAULT_STOP_IDS, system_prompt: str | None = PROMPT_A,
                 num_threads: int = 0):
        if model_vocab_size < NUM_ID_SLOTS:
            raise InvalidInput(f"model_vocab_size {model_vocab_size} is below the tokenizer's {NUM_ID_SLOTS} id slots")
        self.encoding = tiktoken.Encoding("dbrx", pat_str=CL100K_PAT, mergeable_ranks=ranks,
                                          special_tokens=SPECIAL_TOKENS)
        self.num_ranks, self.source = len(ranks), source
        self.max_token_bytes = max(map(len, ranks), default=1)  # bounds the tokens of a text from below
        self.model_vocab_size, self.stop_ids = model_vocab_size, tuple(stop_ids)
        self.chat = ChatTemplate(system_prompt, SPECIAL_TOKENS[IM_START], SPECIAL_TOKENS[IM_END])
        self.tables = {False: bytes_table(ranks, model_vocab_size, True),
                       True: bytes_table(ranks, model_vocab_size, False)}  # keyed by skip_special_tokens
        self.num_threads = num_threads or os.cpu_count() or 1
        self.pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="tokenizer")

    vocab_size = NUM_ID_SLOTS
    eos_id, bos_id, pad_id = EOS_ID, BOS_ID, PAD_ID
    special_tokens = SPECIAL_TOKENS

    def encode(self, texts: Iterable[str], allow_special_tokens: bool = False) -> list[list[int]]:
        """A batch of texts; special-token text is plain text unless allow_special_tokens."""
        texts = [check_text(text, i) for i, text in enumerate(texts)]
        return self.map_batch(self.encoder(allow_special_tokens), texts)

    def encode_text(self, text: str, allow_special_tokens: bool = False) -> list[int]:
        return self.encoder(allow_special_tokens)(check_text(text, 0))

    def encoder(self, allow_special_tokens: bool) -> Callable[[str], list[int]]:
        if allow_special_tokens:
            return lambda text: self.encoding.encode(text, allowed_special="all")
        return self.encoding.encode_ordinary

    def map_batch(self, encode_one: Callable[[str], list[int]], texts: list[str]) -> list[list[int]]:
        """tiktoken releases the GIL while it encodes: one contiguous slice per thread."""
        if len(texts) < 2 or self.num_threads == 1:
            return [encode_one(text) for text in texts]
        parts = self.pool.map(lambda part: [encode_one(text) for text in part], chunks(texts, self.num_threads))
        return [ids for part in parts for ids in part]

    def check_ids(self, ids: Sequence[int], index: int = 0) -> None:
        if ids and (min(ids) < 0 or max(ids) >= self.model_vocab_size):
            position, bad = next((p, i) for p, i in enumerate(ids) if not 0 <= i < self.model_vocab_size)
            raise InvalidInput(f"sequence {index}: id {bad} at position {position} is outside the vocabulary "
                               f"0..{self.model_vocab_size - 1}")

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Bytes of all ids joined, then UTF-8 with U+FFFD; unassigned ids give ""."""
        self.check_ids(ids)
        table = self.tables[skip_special_tokens]
        return b"".join([table[i] for i in ids]).decode("utf-8", errors="replace")

    def decode_batch(self, sequences: Iterable[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        sequences = list(sequences)
        for index, ids in enumerate(sequences):
            self.check_ids(ids, index)
        table = self.tables[skip_special_tokens]
        return [b"".join([table[i] for i in ids]).decode("utf-8", errors="replace") for ids in sequences]

    def token_bytes(self, token_id: int, skip_special_tokens: bool = False) -> bytes:
        if not 0 <= token_id < self.model_vocab_size:
            raise InvalidInput(f"id {token_id} is outside the vocabulary 0..{self.model_vocab_size - 1}")
        return self.tables[skip_special_tokens][token_id]

    def detokenizer(self, skip_special_tokens: bool = False) -> IncrementalDetokenizer:
        """A streaming decoder for one sequence."""
        return IncrementalDetokenizer(lambda token_id: self.token_bytes(token_id, skip_special_tokens))

    def unassigned_mask(self, model_vocab_size: int | None = None) -> list[bool]:
        """True at the ids below model_vocab_size (default: the model's) that no token owns."""
        return unassigned_mask(self.num_ranks, model_vocab_size or self.model_vocab_size)

    def chat_pieces(self, messages: Iterable[Any], add_generation_prompt: bool = False) -> list[Piece]:
        return self.chat.pieces(messages, add_generation_prompt)

    def apply_chat_template(self, messages: Iterable[Any], add_generation_prompt: bool = False) -> list[int]:
        """ChatML ids: markers as their special ids, each text run encoded whole as plain text."""
        ids: list[int] = []
        for index, piece in enumerate(self.chat_pieces(messages, add_generation_prompt)):
            ids += [piece] if isinstance(piece, int) else self.encoding.encode_ordinary(check_text(piece, index))
        return ids

    def render_chat_template(self, messages: Iterable[Any], add_generation_prompt: bool = False) -> str:
        return render(self.chat_pieces(messages, add_generation_prompt), SPECIAL_TEXT_OF_ID)


def load_tokenizer(tokenizer_dir: str | Path, system_prompt: str = AUTO, num_threads: int = 0) -> Tokenizer:
    """DBRX's tokenizer from a model or tokenizer directory, offline.

    system_prompt: `auto` (from tokenizer_config.json), `none`, or a custom default text."""
    tokenizer_dir = Path(tokenizer_dir)
    ranks, source = loader.load_ranks(tokenizer_dir)
    loader.check_added_tokens(tokenizer_dir)
    prompt = default_system_prompt(loader.tokenizer_config(tokenizer_dir), system_prompt)
    return Tokenizer(ranks, source=source, model_vocab_size=loader.model_vocab_size(tokenizer_dir),
                     stop_ids=loader.stop_ids(tokenizer_dir), system_prompt=prompt, num_threads=num_threads)
