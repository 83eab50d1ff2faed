"""`dbrx jobs` and `follow_job`, against the store directly and against a real server."""

import argparse
import io
import json
import threading

import grpc

from dbrx_serve.cli import jobs as jobs_cli
from dbrx_serve.shared import rpc
from dbrx_serve.shared.generated.dbrx.serve.v1 import jobs_pb2_grpc as pb_grpc
from dbrx_serve.shared.jobstore import JobState, Worker
from dbrx_serve.shared.jobstore.service import job_servicer

from tests.serving import served_in_thread

KIND = "convert"
WAIT = 30


def dbrx_jobs(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="dbrx")
    jobs_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["jobs", *argv])
    return args.func(args)


def served(store, config=rpc.ServerConfig()):
    """A JobService on port 0, run by its own event loop in a thread (the CLI is synchronous)."""
    return served_in_thread(lambda: rpc.build_server([job_servicer(store, watch_poll_seconds=0.02)], config))


def run_in_background(store, handler):
    thread = threading.Thread(target=Worker(store, KIND, handler, owner="w1", lease_seconds=2).run_once)
    thread.start()
    return thread


def stepping(job, ctx):
    for step in range(1, 4):
        ctx.progress(step / 3, f"step {step}")
    return {"steps": 3}


def test_list_and_show_read_the_store(store, database_url, capsys):
    job = store.submit(KIND, {"tp_size": 2}, output_dir="/ckpt")
    store.submit("build", {})
    assert dbrx_jobs("list", "--database_url", database_url, "--kind", "convert") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == list(jobs_cli.LIST_COLUMNS)
    assert len(table) == 2 and table[1].split()[:5] == [job.id, "convert", "QUEUED", "0%", "0/3"]

    assert dbrx_jobs("show", job.id, "--database_url", database_url, "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["id"], shown["state"], shown["spec"], shown["output_dir"]) == (job.id, "QUEUED", {"tp_size": 2},
                                                                                 "/ckpt")
    assert dbrx_jobs("show", job.id, "--database_url", database_url) == 0
    assert f"id                {job.id}" in capsys.readouterr().out


def test_list_json_filters_by_state(store, database_url, capsys):
    jobs = [store.submit(KIND, {"n": n}) for n in range(2)]
    store.lease(KIND, "w1", 30)
    assert dbrx_jobs("list", "--database_url", database_url, "--state", "running", "--json") == 0
    assert [j["id"] for j in json.loads(capsys.readouterr().out)] == [jobs[0].id]


def test_cancel_and_errors(store, database_url, capsys):
    job = store.submit(KIND, {})
    assert dbrx_jobs("cancel", job.id, "--database_url", database_url, "--json") == 0
    assert json.loads(capsys.readouterr().out)["state"] == "CANCELLED"
    assert dbrx_jobs("show", "00000000-0000-0000-0000-000000000000", "--database_url", database_url) == 2
    assert "no job with id" in capsys.readouterr().err
    assert dbrx_jobs("show", "bogus", "--database_url", database_url) == 2
    assert "not a UUID" in capsys.readouterr().err


def test_follow_job_on_the_store_returns_the_final_job(store):
    job = store.submit(KIND, {})
    thread = run_in_background(store, stepping)
    final = jobs_cli.follow_job(store, job.id)
    thread.join(WAIT)
    assert (final.id, final.state, final.result) == (job.id, JobState.SUCCEEDED, {"steps": 3})


def test_follow_job_over_grpc_returns_the_final_job(store):
    job = store.submit(KIND, {})
    thread = run_in_background(store, stepping)
    with served(store) as target, grpc.insecure_channel(target) as channel:
        final = jobs_cli.follow_job(pb_grpc.JobServiceStub(channel), job.id)
    thread.join(WAIT)
    assert (final.id, final.state, final.result, final.kind) == (job.id, JobState.SUCCEEDED, {"steps": 3}, KIND)


def test_watch_over_the_server_draws_a_bar_and_exits_by_outcome(store, capsys):
    ok, bad = store.submit(KIND, {}), store.submit(KIND, {})
    run_in_background(store, stepping).join(WAIT)
    run_in_background(store, lambda job, ctx: (_ for _ in ()).throw(ValueError("bad weights"))).join(WAIT)
    with served(store) as target:
        assert dbrx_jobs("watch", ok.id, "--server", target) == 0
        out, err = capsys.readouterr()
        assert err.splitlines()[-1] == f"job {ok.id[:8]} SUCCEEDED 100% succeeded"
        assert "state             SUCCEEDED" in out
        assert dbrx_jobs("list", "--server", target, "--json", "--state", "queued") == 0
        assert [j["id"] for j in json.loads(capsys.readouterr().out)] == [bad.id]  # a retry is queued
        assert dbrx_jobs("cancel", bad.id, "--server", target) == 0
        capsys.readouterr()
        assert dbrx_jobs("watch", bad.id, "--server", target, "--json") == 1
        assert json.loads(capsys.readouterr().out)["state"] == "CANCELLED"
        assert dbrx_jobs("show", "00000000-0000-0000-0000-000000000000", "--server", target) == 2
        assert "not_found: no job with id" in capsys.readouterr().err


def test_follow_job_draws_a_tqdm_bar_when_asked(store):
    job = store.submit(KIND, {})
    run_in_background(store, stepping).join(WAIT)
    drawn = io.StringIO()
    assert jobs_cli.follow_job(store, job.id, file=drawn, bar=True).state == JobState.SUCCEEDED
    assert f"job {job.id[:8]} 100%|" in drawn.getvalue() and "SUCCEEDED succeeded" in drawn.getvalue()


def test_the_bearer_token_is_sent_when_given(store, capsys):
    job = store.submit(KIND, {})
    with served(store, rpc.ServerConfig(auth_token="s3cret")) as target:
        assert dbrx_jobs("show", job.id, "--server", target) == 2
        assert "unauthenticated" in capsys.readouterr().err
        assert dbrx_jobs("show", job.id, "--server", target, "--auth_token", "s3cret", "--json") == 0
        assert json.loads(capsys.readouterr().out)["id"] == job.id
