"""The gateway's settings, built once at the edge (CLI or tests) and checked here."""

import re
from dataclasses import dataclass

from dbrx_serve.shared.errors import InvalidInput, shown
from dbrx_serve.shared.rpc import open_to_network

TARGET = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")  # HOST:PORT, [IPv6]:PORT
MB = 1024 * 1024


@dataclass(frozen=True)
class GatewayConfig:
    """inference: the InferenceService targets (HOST:PORT), balanced by least outstanding requests.
    tokenizer: a TokenizerService target, for /tokenize, /detokenize, logprobs' token texts and
    stop_token_ids (None: those answer 400). api_key: clients must send `Authorization: Bearer KEY`;
    a host beyond loopback needs one unless `insecure` (shared/rpc.py, open_to_network).
    auth_token, tls_ca, tls_client_cert and tls_client_key: what the gRPC services ask of their
    clients (a bearer token; the CA of their certificates; this gateway's certificate and key for
    mutual TLS). model_name: the one model
    /v1/models lists and requests may name. max_request_mb: larger bodies get 413.
    default_max_tokens: a chat request without max_tokens gets this many at most (clipped to what
    the engine's max_seq_len leaves after its max_input_len); a completion gets OpenAI's 16.
    grace_seconds: on SIGTERM, how long open requests may go on."""

    inference: tuple[str, ...]
    tokenizer: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    insecure: bool = False
    auth_token: str | None = None
    tls_ca: str | None = None
    tls_client_cert: str | None = None
    tls_client_key: str | None = None
    model_name: str = "dbrx"
    max_request_mb: int = 8
    default_max_tokens: int = 256
    grace_seconds: float = 10.0

    def __post_init__(self):
        object.__setattr__(self, "inference", tuple(self.inference))
        if not self.inference:
            raise InvalidInput("give at least one --inference HOST:PORT")
        for target in (*self.inference, *([self.tokenizer] if self.tokenizer is not None else [])):
            check_target(target)
        if not 0 <= self.port <= 65535:
            raise InvalidInput(f"--port {self.port} is outside 0..65535")
        if self.api_key == "" or not self.model_name:
            raise InvalidInput("--api_key and --model_name, when given, must not be empty")
        for name in ("max_request_mb", "default_max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"--{name} must be a positive integer, got {value!r}")
        if not 0 <= self.grace_seconds < float("inf"):
            raise InvalidInput(f"--grace_seconds must be >= 0, got {self.grace_seconds!r}")
        if (self.tls_client_cert is None) != (self.tls_client_key is None):
            raise InvalidInput("mutual TLS needs both --tls_client_cert and --tls_client_key")
        open_to_network(self.host, self.api_key, self.insecure, "--api_key KEY")

    @property
    def max_request_bytes(self) -> int:
        return self.max_request_mb * MB


def check_target(target: str) -> None:
    match = TARGET.fullmatch(target) if isinstance(target, str) else None
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        raise InvalidInput(f"a gRPC target is HOST:PORT (port 1..65535), got {shown(target)}")
