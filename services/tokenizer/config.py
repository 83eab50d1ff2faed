"""The tokenizer server's settings, built once at the edge (CLI or tests)."""

from dataclasses import dataclass, field

from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.rpc import ServerConfig

from .chat import AUTO


@dataclass(frozen=True)
class TokenizerServiceConfig:
    """tokenizer_dir: where the BPE and the checkpoint's tokenizer files are.
    max_batch_size: most texts or sequences in one Encode/Decode request.
    system_prompt: the chat template's default system prompt: `auto` (from
    tokenizer_config.json), `none`, or a custom text.
    num_threads: encoding threads per batch (0: one per CPU)."""

    tokenizer_dir: str
    max_batch_size: int = 1024
    system_prompt: str = AUTO
    num_threads: int = 0
    server: ServerConfig = field(default_factory=ServerConfig)

    def __post_init__(self):
        if not self.tokenizer_dir:
            raise InvalidInput("--tokenizer_dir is required: a directory with a *.tiktoken file or tokenizer.json")
        if not isinstance(self.max_batch_size, int) or self.max_batch_size < 1:
            raise InvalidInput(f"max_batch_size must be a positive integer, got {self.max_batch_size!r}")
        if not isinstance(self.num_threads, int) or self.num_threads < 0:
            raise InvalidInput(f"num_threads must be 0 (one per CPU) or positive, got {self.num_threads!r}")
        if not isinstance(self.system_prompt, str) or not self.system_prompt:
            raise InvalidInput("system_prompt must be 'auto', 'none' or a non-empty text")
