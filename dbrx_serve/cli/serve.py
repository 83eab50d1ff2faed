"""`dbrx serve STAGE`: run one stage's gRPC server (health and reflection included), or the
OpenAI-compatible HTTP gateway over the inference and tokenizer services (`openai`), or every
stage at once, each its own process (`all`, serve_all.py)."""

import argparse
import importlib

from .worker import JOB_STAGES, job_stage

ALL_STAGES = ["tokenizer", "converter", "builder", "inference", "openai", "all"]
SERVER_MODULES = {"tokenizer": "dbrx_serve.services.tokenizer.server",  # stages with a main(argv) of their own
                  "inference": "dbrx_serve.services.inference.server",
                  "openai": "dbrx_serve.services.gateway.server"}


def add_parser(subparsers):
    p = subparsers.add_parser("serve", help="serve a stage over gRPC, or the OpenAI HTTP gateway: "
                              + "|".join(ALL_STAGES))
    p.add_argument("stage", choices=ALL_STAGES)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the stage's own flags (dbrx serve STAGE --help)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    if args.stage in SERVER_MODULES:
        return importlib.import_module(SERVER_MODULES[args.stage]).main(args.rest)
    if args.stage in JOB_STAGES:
        from dbrx_serve.shared.job_stage import serve_main

        return serve_main(job_stage(args.stage), args.rest)
    from .serve_all import main

    return main(args.rest, ("--log_level", args.log_level, "--log_format", args.log_format))
