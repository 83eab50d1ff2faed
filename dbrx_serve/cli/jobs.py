"""`dbrx jobs list|show|watch|cancel`: the jobs of a converter or builder server
(`--server HOST:PORT`), or of a job store directly (`--database_url URL`;
default DBRX_DATABASE_URL, else the embedded SQLite file).

    dbrx jobs list --state running
    dbrx jobs show 6f1c...  --json
    dbrx jobs watch 6f1c... --server localhost:50052     # a progress bar until the job ends
    dbrx jobs cancel 6f1c...

`follow_job(store_or_stub, job_id)` is the progress bar other commands reuse
(`dbrx convert`, `dbrx build`): it returns the job once it has ended.
`watch` exits 0 when the job succeeded, 1 when it failed or was cancelled.
"""

import argparse
import contextlib
import json
import sys
from typing import Iterator, Protocol

import grpc
from tqdm import tqdm

from dbrx_serve.shared.errors import DbrxServeError
from dbrx_serve.shared.generated.dbrx.serve.v1 import jobs_pb2 as pb, jobs_pb2_grpc as pb_grpc
from dbrx_serve.shared.jobstore.convert import PB_OF_KIND, PB_OF_STATE, event_from_pb, job_from_pb
from dbrx_serve.shared.jobstore.jobs import Job, JobEvent, JobState
from dbrx_serve.shared.jobstore.store import JobStore
from dbrx_serve.shared.rpc import typed_error

LIST_COLUMNS = ("ID", "KIND", "STATE", "PROGRESS", "ATTEMPTS", "UPDATED", "MESSAGE")
MESSAGE_WIDTH = 60


class JobSource(Protocol):
    """What the commands need; a JobStore is one, RemoteJobs adapts a JobService stub."""

    def get(self, job_id: str) -> Job: ...
    def list_jobs(self, kind: str | None, state: JobState | None, limit: int) -> list[Job]: ...
    def cancel(self, job_id: str) -> Job: ...
    def watch(self, job_id: str, after_seq: int = 0) -> Iterator[JobEvent]: ...


class RemoteJobs:
    """A JobService stub (sync channel) seen as a JobSource; status codes become our typed errors."""

    def __init__(self, stub, auth_token: str | None = None):
        self.stub = stub
        self.metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()

    def get(self, job_id: str) -> Job:
        return job_from_pb(self._call(self.stub.GetJob, pb.GetJobRequest(id=job_id)))

    def list_jobs(self, kind: str | None = None, state: JobState | None = None, limit: int = 100) -> list[Job]:
        request = pb.ListJobsRequest(kind=PB_OF_KIND.get(kind, 0), state=PB_OF_STATE.get(state, 0), limit=limit)
        return [job_from_pb(job) for job in self._call(self.stub.ListJobs, request).jobs]

    def cancel(self, job_id: str) -> Job:
        return job_from_pb(self._call(self.stub.CancelJob, pb.CancelJobRequest(id=job_id)))

    def watch(self, job_id: str, after_seq: int = 0) -> Iterator[JobEvent]:
        stream = self._call(self.stub.WatchJob, pb.WatchJobRequest(id=job_id, after_seq=after_seq))
        try:
            yield from (event_from_pb(event) for event in stream)
        except grpc.RpcError as error:
            raise typed_error(error) from None

    def _call(self, method, request):
        try:
            return method(request, metadata=self.metadata)
        except grpc.RpcError as error:
            raise typed_error(error) from None


def jobs_source(store_or_stub) -> JobSource:
    """A JobStore as is; a JobServiceStub wrapped in RemoteJobs."""
    return RemoteJobs(store_or_stub) if hasattr(store_or_stub, "WatchJob") else store_or_stub


def follow_job(store_or_stub, job_id: str, *, file=None, bar: bool | None = None) -> Job:
    """Show the job's events until it ends, then return the final job. On a terminal
    (or with bar=True) as a tqdm bar; otherwise one line per event, for logs."""
    jobs = jobs_source(store_or_stub)
    file = file or sys.stderr
    show = progress_bar if (file.isatty() if bar is None else bar) else _event_lines
    with show(job_id, file) as update:
        for event in jobs.watch(job_id):
            update(event)
    return jobs.get(job_id)


@contextlib.contextmanager
def progress_bar(job_id: str, file):
    with tqdm(total=100, desc=f"job {job_id[:8]}", file=file,
              bar_format="{desc} {percentage:3.0f}%|{bar:30}| {elapsed} {postfix}") as bar:
        def update(event: JobEvent) -> None:
            bar.n = round(event.progress * 100, 1)
            bar.set_postfix_str(f"{event.state.value} {_one_line(event.message)}"[:MESSAGE_WIDTH + 12])
        yield update


@contextlib.contextmanager
def _event_lines(job_id: str, file):
    def update(event: JobEvent) -> None:
        print(f"job {job_id[:8]} {event.state.value} {event.progress:4.0%} {_one_line(event.message)}",
              file=file, flush=True)
    yield update


# -- the command -------------------------------------------------------------------


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("jobs", help="list, show, watch or cancel conversion and build jobs",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = _where_parser()
    actions = parser.add_subparsers(dest="jobs_action", required=True, metavar="list|show|watch|cancel")
    listing = actions.add_parser("list", parents=[where], help="the newest jobs, as a table or JSON")
    listing.add_argument("--kind", choices=("convert", "build"), help="only jobs of this kind")
    listing.add_argument("--state", type=str.upper, choices=[s.value for s in JobState], help="only jobs in this state")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    for name, help_text in (("show", "one job in full"), ("watch", "a progress bar until the job ends"),
                            ("cancel", "cancel a queued job, or stop a running one at its next checkpoint")):
        action = actions.add_parser(name, parents=[where], help=help_text)
        action.add_argument("job_id")
    parser.set_defaults(func=run)
    return parser


def _where_parser() -> argparse.ArgumentParser:
    where = argparse.ArgumentParser(add_help=False)
    group = where.add_mutually_exclusive_group()
    group.add_argument("--server", metavar="HOST:PORT", help="a converter or builder server's JobService")
    group.add_argument("--database_url", help="read the job store directly (default: DBRX_DATABASE_URL, "
                                              "else the embedded SQLite file)")
    where.add_argument("--auth_token", help="bearer token for --server")
    where.add_argument("--tls_ca", help="PEM file of the CA that signed --server's certificate")
    where.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return where


def run(args: argparse.Namespace) -> int:
    try:
        with _open_source(args) as jobs:
            return ACTIONS[args.jobs_action](jobs, args)
    except DbrxServeError as error:
        print(f"dbrx jobs: {error}", file=sys.stderr)
        return 2


def _list(jobs: JobSource, args) -> int:
    found = jobs.list_jobs(args.kind, JobState(args.state) if args.state else None, args.limit)
    print(json.dumps([job.to_dict() for job in found], indent=2) if args.json else format_table(found))
    return 0


def _show(jobs: JobSource, args) -> int:
    _print_job(jobs.get(args.job_id), args.json)
    return 0


def _watch(jobs: JobSource, args) -> int:
    job = follow_job(jobs, args.job_id)
    _print_job(job, args.json)
    return 0 if job.state is JobState.SUCCEEDED else 1


def _cancel(jobs: JobSource, args) -> int:
    _print_job(jobs.cancel(args.job_id), args.json)
    return 0


ACTIONS = {"list": _list, "show": _show, "watch": _watch, "cancel": _cancel}


def format_table(jobs: list[Job]) -> str:
    rows = [LIST_COLUMNS] + [_row(job) for job in jobs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(LIST_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _row(job: Job) -> tuple[str, ...]:
    return (job.id, job.kind, job.state.value, f"{job.progress:.0%}", f"{job.attempts}/{job.max_attempts}",
            f"{job.updated_at:%Y-%m-%d %H:%M:%S}", _one_line(job.message)[:MESSAGE_WIDTH])


def format_job(job: Job) -> str:
    """One `field: value` line per field, JSON for spec and result."""
    values = job.to_dict()
    width = max(len(name) for name in values)
    return "\n".join(f"{name.ljust(width)}  {_cell(value)}" for name, value in values.items())


def _print_job(job: Job, as_json: bool) -> None:
    print(json.dumps(job.to_dict(), indent=2) if as_json else format_job(job))


def _cell(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "" if value is None else str(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _open_source:
    """The JobSource the flags name, closed afterwards (channel or store)."""

    def __init__(self, args):
        self.args, self.closable = args, None

    def __enter__(self) -> JobSource:
        if self.args.server:
            self.closable = _channel(self.args.server, self.args.tls_ca)
            return RemoteJobs(pb_grpc.JobServiceStub(self.closable), self.args.auth_token)
        self.closable = JobStore.open(self.args.database_url)
        return self.closable

    def __exit__(self, *exc) -> None:
        if self.closable is not None:
            self.closable.close()


def _channel(target: str, tls_ca: str | None) -> grpc.Channel:
    if tls_ca is None:
        return grpc.insecure_channel(target)
    with open(tls_ca, "rb") as ca:
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(ca.read()))
