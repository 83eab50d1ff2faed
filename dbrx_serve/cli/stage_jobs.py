"""How `dbrx convert` and `dbrx build` run their job: in this process (the
embedded store, a worker thread that runs only this job) or on a service
(`--server`); either way a progress bar follows the job's events."""

import sys
from pathlib import Path

from dbrx_serve.shared.rpc import typed_error

from .jobs import RemoteJobs, _channel, follow_job


def absolute(path: str | None) -> str | None:
    """Paths travel in job specs: a worker may run in another directory."""
    return str(Path(path).absolute()) if path else path


def run_in_process(stage, database_url: str | None, options):
    """Submit to the job store and run it with a worker thread here; Ctrl-C cancels
    it (the worker stops at its next checkpoint and removes its temporary output)."""
    from dbrx_serve.shared.job_stage import start_worker_thread
    from dbrx_serve.shared.jobstore import JobStore

    with JobStore.open(database_url) as store:
        job = store.submit(stage.kind, options.to_dict(), output_dir=options.output_dir)
        worker = stage.worker(store, poll_seconds=0.2, job_id=job.id)
        thread = start_worker_thread(worker, f"{stage.name}-worker")
        try:
            return follow_job(store, job.id)
        except KeyboardInterrupt:
            store.cancel(job.id)
            raise
        finally:
            worker.stop()
            thread.join()


def run_remote(server: str, submit, auth_token: str | None, tls_ca: str | None):
    """`submit(channel, metadata)` sends the stage's Submit RPC and returns its Job message."""
    import grpc

    from dbrx_serve.shared.generated.dbrx.serve.v1 import jobs_pb2_grpc
    from dbrx_serve.shared.jobstore.convert import job_from_pb

    metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
    with _channel(server, tls_ca) as channel:
        try:
            job = job_from_pb(submit(channel, metadata))
        except grpc.RpcError as error:
            raise typed_error(error) from None
        return follow_job(RemoteJobs(jobs_pb2_grpc.JobServiceStub(channel), auth_token), job.id)


def report(job, command: str, artifact: str) -> int:
    """0 with where the artifact is, or 1 with the job's message."""
    from dbrx_serve.shared.jobstore import JobState

    if job.state is JobState.SUCCEEDED:
        print(f"{artifact} written to {job.result['output_dir']} (job {job.id})")
        return 0
    print(f"dbrx {command}: job {job.id} {job.state.value.lower()}: {job.message}", file=sys.stderr)
    return 1
