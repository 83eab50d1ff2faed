"""`dbrx worker converter|builder`: lease and run jobs from the job store."""

import importlib

JOB_STAGES = {"converter": ("dbrx_serve.services.converter.stage", "CONVERTER"),
              "builder": ("dbrx_serve.services.builder.stage", "BUILDER")}


def job_stage(name: str):
    """The JobStage named `name` (imported on demand: each pulls in its stage's code)."""
    module, attribute = JOB_STAGES[name]
    return getattr(importlib.import_module(module), attribute)


def add_parser(subparsers):
    p = subparsers.add_parser("worker", help="run convert or build jobs from the job store")
    p.add_argument("stage", choices=list(JOB_STAGES))
    p.add_argument("--database_url", default=None, help="default: $DBRX_DATABASE_URL or the embedded SQLite file")
    p.add_argument("--lease_seconds", type=float, default=30.0, help="a job whose worker is silent this long is retried")
    p.add_argument("--poll_seconds", type=float, default=1.0, help="wait between looks for a queued job")
    p.add_argument("--allowed_root", action="append", default=[], metavar="DIR",
                   help="run only jobs whose paths lie under DIR (repeatable; default: any absolute path)")
    p.add_argument("--metrics_port", type=int, default=None,
                   help="serve Prometheus /metrics (job durations) here (0: a free port)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from dbrx_serve.shared.job_stage import run_worker
    from dbrx_serve.shared.options import PathPolicy

    return run_worker(job_stage(args.stage), args.database_url, args.lease_seconds, args.poll_seconds,
                      PathPolicy(tuple(args.allowed_root)), args.metrics_port)
