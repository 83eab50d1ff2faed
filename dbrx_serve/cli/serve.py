"""`dbrx serve STAGE`: run one stage's gRPC server (health and reflection included)."""

import argparse
import sys

SERVE_STAGES = {"tokenizer": "dbrx_serve.services.tokenizer.server",
                "builder": "dbrx_serve.services.builder.server",
                "converter": "dbrx_serve.services.converter.server"}
ALL_STAGES = ["tokenizer", "converter", "builder", "inference", "all"]


def add_parser(subparsers):
    p = subparsers.add_parser("serve", help="serve a stage over gRPC: " + "|".join(ALL_STAGES))
    p.add_argument("stage", choices=ALL_STAGES)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the stage's own flags (dbrx serve STAGE --help)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    if args.stage not in SERVE_STAGES:
        print(f"dbrx serve {args.stage}: not built yet (issues 5 and 6)", file=sys.stderr)
        return 3
    import importlib
    return importlib.import_module(SERVE_STAGES[args.stage]).main(args.rest)
