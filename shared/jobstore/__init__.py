"""The job store all stages share: jobs and their events in SQLite or PostgreSQL,
leased by workers, watched by clients. See store.py for the guarantees."""

from .config import StoreConfig, default_database_url
from .jobs import BUILD, CONVERT, Job, JobEvent, JobState
from .store import DEFAULT_MAX_ATTEMPTS, JobStore, LeaseLost, StoreUnavailable
from .worker import JobContext, Worker

__all__ = ["BUILD", "CONVERT", "DEFAULT_MAX_ATTEMPTS", "Job", "JobContext", "JobEvent", "JobState",
           "JobStore", "LeaseLost", "StoreConfig", "StoreUnavailable", "Worker", "default_database_url"]
