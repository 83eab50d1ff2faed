"""`dbrx serve STAGE`: run one stage's gRPC server (health and reflection included)."""

import argparse
import importlib
import sys

from .worker import JOB_STAGES, job_stage

ALL_STAGES = ["tokenizer", "converter", "builder", "inference", "all"]


def add_parser(subparsers):
    p = subparsers.add_parser("serve", help="serve a stage over gRPC: " + "|".join(ALL_STAGES))
    p.add_argument("stage", choices=ALL_STAGES)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the stage's own flags (dbrx serve STAGE --help)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    if args.stage == "tokenizer":
        return importlib.import_module("dbrx_serve.services.tokenizer.server").main(args.rest)
    if args.stage in JOB_STAGES:
        from dbrx_serve.shared.job_stage import serve_main

        return serve_main(job_stage(args.stage), args.rest)
    print(f"dbrx serve {args.stage}: not built yet (the inference service is the next issue)", file=sys.stderr)
    return 3
