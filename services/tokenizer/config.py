"""The tokenizer server's settings, built once at the edge (CLI or tests)."""

from dataclasses import dataclass, field

from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.rpc import ServerConfig

from .chat import AUTO


@dataclass(frozen=True)
class TokenizerServiceConfig:
    """tokenizer_dir: where the BPE and the checkpoint's tokenizer files are.
    max_batch_size: most texts or sequences in one Encode/Decode request.
    max_text_length: most characters in one text, or in one chat message (role and content).
    max_chat_messages: most messages in one ApplyChatTemplate request.
    system_prompt: the chat template's default system prompt: `auto` (from
    tokenizer_config.json), `none`, or a custom text.
    num_threads: encoding threads per batch (0: one per CPU)."""

    tokenizer_dir: str
    max_batch_size: int = 1024
    max_text_length: int = 1_000_000  # 8x DBRX's 32k-token context, at about 4 characters a token
    max_chat_messages: int = 8192  # a turn costs at least 4 tokens: no more fit in DBRX's 32k context
    system_prompt: str = AUTO
    num_threads: int = 0
    server: ServerConfig = field(default_factory=ServerConfig)

    def __post_init__(self):
        if not self.tokenizer_dir:
            raise InvalidInput("--tokenizer_dir is required: a directory with a *.tiktoken file or tokenizer.json")
        for name in ("max_batch_size", "max_text_length", "max_chat_messages"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.num_threads, int) or self.num_threads < 0:
            raise InvalidInput(f"num_threads must be 0 (one per CPU) or positive, got {self.num_threads!r}")
        if not isinstance(self.system_prompt, str) or not self.system_prompt:
            raise InvalidInput("system_prompt must be 'auto', 'none' or a non-empty text")
