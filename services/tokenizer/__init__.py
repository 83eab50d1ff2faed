"""TokenizerService: DBRX's tiktoken encoding, offline.

The library (`Tokenizer`, `load_tokenizer`, `IncrementalDetokenizer`) imports
neither gRPC nor torch; `servicer` and `server` put it behind gRPC."""

from .chat import ChatMessage, PROMPT_A, PROMPT_B
from .detokenizer import IncrementalDetokenizer
from .tokenizer import Tokenizer, load_tokenizer

__all__ = ["ChatMessage", "IncrementalDetokenizer", "PROMPT_A", "PROMPT_B", "Tokenizer", "load_tokenizer"]
