"""Where a client connects and how: the target, bearer-token auth, TLS, the default deadline
and the retry policy; the sync and asyncio channels made from them."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import grpc
import grpc.aio

from .retry import RetryPolicy

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # the servers' limit (docs/api.md, "What every server does")


@dataclass(frozen=True)
class Connection:
    """target: HOST:PORT. auth_token: sent as `authorization: Bearer TOKEN` on every call.
    tls_ca: the PEM (a path or its bytes) of the CA that signed the server's certificate;
    tls=True without it trusts the system's roots; neither: plaintext. timeout: each call's
    deadline in seconds (None: none; a call may pass its own). retry: how idempotent calls
    are retried on UNAVAILABLE. options: more gRPC channel arguments."""

    target: str
    auth_token: str | None = None
    tls_ca: str | Path | bytes | None = None
    tls: bool = False
    timeout: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    options: Sequence[tuple[str, Any]] = ()

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.auth_token}"),) if self.auth_token else ()

    def channel(self) -> grpc.Channel:
        credentials = self._credentials()
        if credentials is None:
            return grpc.insecure_channel(self.target, self._options())
        return grpc.secure_channel(self.target, credentials, self._options())

    def aio_channel(self) -> grpc.aio.Channel:
        credentials = self._credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(self.target, self._options())
        return grpc.aio.secure_channel(self.target, credentials, self._options())

    def _credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls_ca is None and not self.tls:
            return None
        ca = self.tls_ca if isinstance(self.tls_ca, bytes) or self.tls_ca is None else Path(self.tls_ca).read_bytes()
        return grpc.ssl_channel_credentials(root_certificates=ca)

    def _options(self) -> list[tuple[str, Any]]:
        return [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES), *self.options]
