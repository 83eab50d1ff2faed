"""Jobs <-> protobuf, the one place that knows both."""

import json
from datetime import datetime, timezone

from google.protobuf.timestamp_pb2 import Timestamp

from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.generated.dbrx.serve.v1 import jobs_pb2 as pb

from .jobs import BUILD, CONVERT, Job, JobEvent, JobState

KIND_OF_PB = {pb.JOB_KIND_CONVERT: CONVERT, pb.JOB_KIND_BUILD: BUILD}
PB_OF_KIND = {kind: value for value, kind in KIND_OF_PB.items()}
STATE_OF_PB = {getattr(pb, f"JOB_STATE_{state.value}"): state for state in JobState}
PB_OF_STATE = {state: value for value, state in STATE_OF_PB.items()}


def kind_from_pb(kind: int) -> str | None:
    """None for JOB_KIND_UNSPECIFIED (all kinds); an unknown number is refused, not read as all."""
    return _known("kind", kind, KIND_OF_PB, pb.JobKind)


def state_from_pb(state: int) -> JobState | None:
    """None for JOB_STATE_UNSPECIFIED (all states); an unknown number is refused, not read as all."""
    return _known("state", state, STATE_OF_PB, pb.JobState)


def _known(what: str, value: int, table: dict, enum):
    if value != 0 and value not in table:
        names = ", ".join(f"{enum.Name(number)} ({number})" for number in table)
        raise InvalidInput(f"unknown job {what} {value}: choose one of {names}, or leave it unset for all")
    return table.get(value)


def job_to_pb(job: Job) -> pb.Job:
    return pb.Job(
        id=job.id, kind=PB_OF_KIND.get(job.kind, pb.JOB_KIND_UNSPECIFIED), state=PB_OF_STATE[job.state],
        progress=job.progress, message=job.message, output_dir=job.output_dir, attempts=job.attempts,
        max_attempts=job.max_attempts, idempotency_key=job.idempotency_key or "",
        spec_json=json.dumps(job.spec), result_json=json.dumps(job.result) if job.result is not None else "",
        lease_owner=job.lease_owner or "", created_at=_timestamp(job.created_at),
        started_at=_timestamp(job.started_at), finished_at=_timestamp(job.finished_at),
        updated_at=_timestamp(job.updated_at))


def job_from_pb(message: pb.Job) -> Job:
    """A Job as a remote client sees it (no lease expiry, heartbeat, cancel flag or last error)."""
    return Job(
        id=message.id, kind=KIND_OF_PB.get(message.kind, ""), spec=json.loads(message.spec_json or "{}"),
        state=STATE_OF_PB[message.state], attempts=message.attempts, max_attempts=message.max_attempts,
        progress=message.progress, message=message.message, last_error="",
        result=json.loads(message.result_json) if message.result_json else None,
        output_dir=message.output_dir, idempotency_key=message.idempotency_key or None,
        cancel_requested=False, lease_owner=message.lease_owner or None, lease_expires_at=None,
        heartbeat_at=None, created_at=_datetime(message, "created_at"),
        started_at=_datetime(message, "started_at"), finished_at=_datetime(message, "finished_at"),
        updated_at=_datetime(message, "updated_at"))


def event_to_pb(event: JobEvent) -> pb.JobEvent:
    return pb.JobEvent(seq=event.seq, job_id=event.job_id, state=PB_OF_STATE[event.state],
                       progress=event.progress, message=event.message, time=_timestamp(event.time))


def event_from_pb(message: pb.JobEvent) -> JobEvent:
    return JobEvent(job_id=message.job_id, seq=message.seq, state=STATE_OF_PB[message.state],
                    progress=message.progress, message=message.message, time=_datetime(message, "time"))


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _datetime(message, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    return getattr(message, field).ToDatetime(tzinfo=timezone.utc)
