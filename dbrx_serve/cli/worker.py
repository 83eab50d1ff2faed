"""`dbrx worker converter|builder`: lease and run jobs from the job store."""

import importlib
import sys

# stage -> module with `run_worker(database_url, lease_seconds, poll_seconds) -> int`
WORKER_STAGES = {"builder": "dbrx_serve.services.builder.worker",
                 "converter": "dbrx_serve.services.converter.worker"}


def add_parser(subparsers):
    p = subparsers.add_parser("worker", help="run convert or build jobs from the job store")
    p.add_argument("stage", choices=["converter", "builder"])
    p.add_argument("--database_url", default=None, help="default: $DBRX_DATABASE_URL or the embedded SQLite file")
    p.add_argument("--lease_seconds", type=float, default=30.0, help="a job whose worker is silent this long is retried")
    p.add_argument("--poll_seconds", type=float, default=1.0, help="wait between looks for a queued job")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    if args.stage not in WORKER_STAGES:
        print(f"dbrx worker {args.stage}: not built yet (issue 5)", file=sys.stderr)
        return 3
    return importlib.import_module(WORKER_STAGES[args.stage]).run_worker(
        args.database_url, args.lease_seconds, args.poll_seconds)
