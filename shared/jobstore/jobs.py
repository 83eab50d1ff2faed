"""What the job store hands out: plain frozen values, never live ORM rows,
so callers can keep them across threads, processes and RPC boundaries."""

from dataclasses import asdict, dataclass
from datetime import datetime
from enum import Enum
from typing import Any

CONVERT = "convert"  # the job kinds our stages submit
BUILD = "build"


class JobState(str, Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    spec: dict[str, Any]
    state: JobState
    attempts: int
    max_attempts: int
    progress: float
    message: str
    last_error: str
    result: dict[str, Any] | None
    output_dir: str
    idempotency_key: str | None
    cancel_requested: bool
    lease_owner: str | None
    lease_expires_at: datetime | None
    heartbeat_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: states by name, times in ISO 8601."""
        return {k: _plain(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class JobEvent:
    """One state change or progress note; `seq` increases per job from 1."""

    job_id: str
    seq: int
    state: JobState
    progress: float
    message: str
    time: datetime

    def to_dict(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in asdict(self).items()}


def _plain(value):
    if isinstance(value, JobState):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    return value
