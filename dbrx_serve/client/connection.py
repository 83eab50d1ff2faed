"""Where a client connects and how: the target, bearer-token auth, TLS (mutual TLS with a
client certificate), the default deadline and the retry policy; the sync and asyncio channels
made from them."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import grpc
import grpc.aio

from .retry import RetryPolicy

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # the servers' limit (docs/api.md, "What every server does")
Pem = str | Path | bytes  # a PEM file's path, or its bytes


@dataclass(frozen=True)
class Connection:
    """target: HOST:PORT. auth_token: sent as `authorization: Bearer TOKEN` on every call.
    tls_ca: the PEM (a path or its bytes) of the CA that signed the server's certificate;
    tls=True without it trusts the system's roots; neither: plaintext. tls_client_cert and
    tls_client_key: this client's certificate and key (PEM paths or bytes), for a server that
    requires them (mutual TLS, `--tls_client_ca`); they imply TLS. timeout: each call's
    deadline in seconds (None: none; a call may pass its own). retry: how idempotent calls
    are retried on UNAVAILABLE. options: more gRPC channel arguments."""

    target: str
    auth_token: str | None = None
    tls_ca: Pem | None = None
    tls: bool = False
    tls_client_cert: Pem | None = None
    tls_client_key: Pem | None = None
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
        return tls_credentials(self.tls_ca, self.tls, self.tls_client_cert, self.tls_client_key)

    def _options(self) -> list[tuple[str, Any]]:
        return [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES), *self.options]


def tls_credentials(ca: Pem | None, tls: bool = False, client_cert: Pem | None = None,
                    client_key: Pem | None = None) -> grpc.ChannelCredentials | None:
    """A channel's TLS credentials: the CA of the server's certificate (None: the system's roots)
    and, for mutual TLS, this client's certificate and key. None (plaintext) when there is no CA,
    no client certificate and `tls` is False."""
    if (client_cert is None) != (client_key is None):
        raise ValueError("a client certificate needs its key, and a key its certificate (tls_client_cert, "
                         "tls_client_key)")
    if ca is None and client_cert is None and not tls:
        return None
    return grpc.ssl_channel_credentials(root_certificates=_pem(ca), private_key=_pem(client_key),
                                        certificate_chain=_pem(client_cert))


def _pem(value: Pem | None) -> bytes | None:
    return value if value is None or isinstance(value, bytes) else Path(value).read_bytes()
