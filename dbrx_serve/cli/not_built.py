"""Subcommands whose stage is not built yet: their flags parse (so `--help`
documents them) and running one says so with exit 3."""

import sys


def not_built_yet(issue: str):
    def run(args) -> int:
        print(f"dbrx {args.command}: not built yet ({issue})", file=sys.stderr)
        return 3
    return run
