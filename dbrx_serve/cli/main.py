"""`dbrx`: one command, a subcommand per stage (docs/api.md). Each subcommand
lives in its own module with `add_parser(subparsers)`; the module sets
`func` on its parser, and `main` maps domain errors to a message and exit 2."""

import argparse
import importlib
import sys

from dbrx_serve import __version__
from dbrx_serve.shared import logs
from dbrx_serve.shared.errors import DbrxServeError

SUBCOMMANDS = ["convert", "build", "run", "summarize", "tokenize", "serve", "worker", "jobs", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dbrx", description="Convert, build, run and serve DBRX.")
    parser.add_argument("--version", action="version", version=f"dbrx-serve {__version__}")
    parser.add_argument("--log_level", default="warning", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log_format", default="text", choices=["text", "json"],
                        help="json: one object per line (time, level, logger, message, job_id, request_id)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"dbrx_serve.cli.{name}").add_parser(subparsers)
    return parser


SERVER_EXTRA = "pip install 'dbrx-serve[server]'"


def main(argv: list[str] | None = None) -> int:
    from dbrx_serve.services.inference.supervisor import supervise  # the standard library only
    if (status := supervise()) is not None:  # an MPI launcher started us: the rank runs as our child
        return status
    try:
        parser = build_parser()
    except ModuleNotFoundError as error:  # the base install is the client SDK alone
        print(f"dbrx: the command needs the server install ({SERVER_EXTRA}): no module {error.name!r}",
              file=sys.stderr)
        return 2
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # a command that starts an MPI world runs itself again in it
    logs.configure(args.log_level, args.log_format)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DbrxServeError as error:
        print(f"dbrx {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dbrx {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
