"""Where the job store lives. Built once at the edge (CLI, server main);
`from_env` is the one place that reads DBRX_DATABASE_URL."""

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ..errors import InvalidInput, shown

ENV_URL = "DBRX_DATABASE_URL"
SUPPORTED_BACKENDS = ("sqlite", "postgresql")


def default_database_url(environ: Mapping[str, str] = os.environ) -> str:
    """The embedded SQLite file under the XDG data dir, e.g. ~/.local/share/dbrx-serve/jobs.db."""
    data_home = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(data_home) / 'dbrx-serve' / 'jobs.db'}"


@dataclass(frozen=True)
class StoreConfig:
    database_url: str
    busy_timeout_seconds: float = 30.0  # SQLite: how long a writer waits for the lock
    pool_size: int = 5

    def __post_init__(self):
        try:
            url = make_url(self.database_url)
        except (ArgumentError, ValueError) as error:  # ValueError: a port that is no number
            raise InvalidInput(f"database url {self.shown_url} is malformed: {error}") from None
        if url.get_backend_name() not in SUPPORTED_BACKENDS:
            raise InvalidInput(f"database url {self.shown_url}: backend {url.get_backend_name()!r} "
                               f"is not one of {', '.join(SUPPORTED_BACKENDS)}")
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            raise InvalidInput("an in-memory SQLite database cannot be shared by workers: "
                               "give a file, e.g. sqlite:////var/lib/dbrx/jobs.db")
        if self.busy_timeout_seconds <= 0 or self.pool_size <= 0:
            raise InvalidInput("busy_timeout_seconds and pool_size must be positive")

    @property
    def shown_url(self) -> str:
        """The URL as messages and logs may show it: never its password."""
        return shown(without_password(self.database_url))

    @property
    def backend(self) -> str:
        return make_url(self.database_url).get_backend_name()

    @classmethod
    def from_env(cls, database_url: str | None = None, environ: Mapping[str, str] = os.environ) -> "StoreConfig":
        """An explicit url wins, then DBRX_DATABASE_URL, then the embedded SQLite file."""
        return cls(database_url or environ.get(ENV_URL) or default_database_url(environ))


def without_password(url: str) -> str:
    """A database URL with its password (if any) replaced by ***, even one that does not parse."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"://([^/@:]*):[^/]*@", r"://\1:***@", url, count=1)
