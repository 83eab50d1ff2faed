"""`dbrx serve all`: every stage on this host, each its own process over one job store (the
embedded SQLite file unless --database_url): the tokenizer service, the converter and builder
services each with a worker process, and, given an engine, the inference service and the
OpenAI-compatible gateway over it. Ports and metrics URLs are printed once all listen; Ctrl-C
or SIGTERM stops them all; a stage that dies is reported and the others are stopped (exit 1).

    dbrx serve all [--engine_dir E] [--tokenizer_dir T] [--database_url URL] [--free_ports]
                   [--host H] [--auth_token T] [--api_key K] [--insecure]
"""

import argparse
import signal
import sys
import threading
from pathlib import Path

from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.rpc import open_to_network

from .launcher import LISTENING, WORKER_READY, Child, Launcher

PORTS = {"tokenizer": (50051, 9051), "converter": (50052, 9052), "builder": (50053, 9053),
         "inference": (50054, 9054), "converter-worker": (None, 9062), "builder-worker": (None, 9063),
         "openai": (8000, None)}  # stage: (gRPC or HTTP port, metrics port); the gateway's /metrics is on its own


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dbrx serve all", description=__doc__.split("\n\n")[0])
    p.add_argument("--engine_dir", help="serve this engine (inference service and OpenAI gateway)")
    p.add_argument("--tokenizer_dir", help="the tokenizer service's files (default: the engine's tokenizer/)")
    p.add_argument("--database_url", help="job store (default: $DBRX_DATABASE_URL, else the embedded SQLite file)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--free_ports", action="store_true", help="every port picked free (0) instead of the defaults")
    p.add_argument("--device", default="auto", help="the inference service's device")
    p.add_argument("--allowed_root", action="append", default=[], metavar="DIR",
                   help="converter and builder accept only paths under DIR (repeatable)")
    p.add_argument("--auth_token", help="every gRPC service requires 'authorization: Bearer <token>'")
    p.add_argument("--api_key", help="the OpenAI gateway requires 'Authorization: Bearer <key>'")
    p.add_argument("--insecure", action="store_true", help="allow a --host beyond loopback without --auth_token "
                   "and --api_key (every stage logs a warning)")
    return p


def check_exposure(args: argparse.Namespace) -> None:
    """Refuse a --host beyond loopback without the secrets its stages need, before any starts."""
    open_to_network(args.host, args.auth_token, args.insecure, "--auth_token TOKEN")
    if args.engine_dir:
        open_to_network(args.host, args.api_key, args.insecure, "--api_key KEY (the OpenAI gateway's)")


class Stages:
    """The command line of each stage from the flags."""

    def __init__(self, args: argparse.Namespace):
        self.args = args

    def port(self, stage: str, which: int) -> int:
        return 0 if self.args.free_ports else PORTS[stage][which]

    def server(self, stage: str) -> list[object]:
        token = ["--auth_token", self.args.auth_token] if self.args.auth_token else []
        return ["--host", self.args.host, "--port", self.port(stage, 0), "--metrics_port", self.port(stage, 1), *token,
                *self.insecure()]

    def insecure(self) -> list[str]:
        return ["--insecure"] if self.args.insecure else []

    def store(self) -> list[object]:
        roots = [flag for root in self.args.allowed_root for flag in ("--allowed_root", root)]
        return [*(["--database_url", self.args.database_url] if self.args.database_url else []), *roots]

    def tokenizer_dir(self) -> str | None:
        if self.args.tokenizer_dir:
            return self.args.tokenizer_dir
        engine_tokenizer = Path(self.args.engine_dir or "/nonexistent") / "tokenizer"
        return str(engine_tokenizer) if engine_tokenizer.is_dir() else None


def start_all(launcher: Launcher, stages: Stages) -> list[Child]:
    """Spawn every stage at once (their imports overlap), then wait for each to be ready."""
    args, spawned = stages.args, []
    if (tokenizer_dir := stages.tokenizer_dir()) is not None:
        spawned.append(launcher.spawn("tokenizer", "serve", "tokenizer", "--tokenizer_dir", tokenizer_dir,
                                      *stages.server("tokenizer")))
    for stage in ("converter", "builder"):
        spawned.append(launcher.spawn(stage, "serve", stage, *stages.server(stage), *stages.store()))
        spawned.append(launcher.spawn(f"{stage}-worker", "worker", stage, "--metrics_port",
                                      stages.port(f"{stage}-worker", 1), *stages.store()))
    if args.engine_dir:
        spawned.append(launcher.spawn("inference", "serve", "inference", "--engine_dir", args.engine_dir,
                                      "--device", args.device, *stages.server("inference")))
    return [launcher.ready(c, WORKER_READY if c.name.endswith("worker") else LISTENING) for c in spawned]


def start_gateway(launcher: Launcher, stages: Stages, children: list[Child]) -> Child:
    by_name = {child.name: child for child in children}
    args = stages.args
    flags = ["--inference", by_name["inference"].address, "--host", args.host, "--port", stages.port("openai", 0)]
    flags += ["--tokenizer", by_name["tokenizer"].address] if "tokenizer" in by_name else []
    flags += ["--auth_token", args.auth_token] if args.auth_token else []
    flags += ["--api_key", args.api_key] if args.api_key else []
    flags += stages.insecure()
    gateway = launcher.start("openai", "serve", "openai", *flags)
    gateway.metrics = f"http://{gateway.address}/metrics"
    return gateway


def print_table(children: list[Child], skipped: list[str]) -> None:
    print("dbrx serve all: every stage is up", flush=True)
    for child in children:
        where = f"http://{child.address}/v1" if child.name == "openai" else child.address or "-"
        print(f"  {child.name:<17} {where:<28} metrics {child.metrics or '-':<36} pid {child.pid}", flush=True)
    for line in skipped:
        print(f"  {line}", flush=True)
    print("Ctrl-C or SIGTERM stops them all.", flush=True)


def skipped(stages: Stages) -> list[str]:
    notes = []
    if stages.tokenizer_dir() is None:
        notes.append("no tokenizer service: give --tokenizer_dir (or an --engine_dir with tokenizer/)")
    if not stages.args.engine_dir:
        notes.append("no inference service or OpenAI gateway: give --engine_dir ENGINE to serve one")
    return notes


def wait_for_stop_or_death(launcher: Launcher) -> Child | None:
    """Until SIGINT/SIGTERM (None) or a child exits (that child)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.2):
        if (dead := launcher.dead()) is not None:
            return dead
    return None


def main(argv: list[str], dbrx_flags: tuple[str, ...] = ()) -> int:
    args = parser().parse_args(argv)
    if args.engine_dir and not Path(args.engine_dir).is_dir():
        raise InvalidInput(f"--engine_dir {args.engine_dir} is not a directory")
    check_exposure(args)
    stages = Stages(args)
    with Launcher(dbrx_flags) as launcher:
        children = start_all(launcher, stages)
        if args.engine_dir:
            children.append(start_gateway(launcher, stages, children))
        print_table(children, skipped(stages))
        dead = wait_for_stop_or_death(launcher)
        if dead is not None:
            print(f"dbrx serve all: the {dead.name} process (pid {dead.pid}) exited with status "
                  f"{dead.process.returncode}; stopping the others", file=sys.stderr, flush=True)
        print("dbrx serve all: stopping every stage", flush=True)
    print("dbrx serve all: stopped", flush=True)
    return 0 if dead is None else 1
