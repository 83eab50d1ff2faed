"""Stages as child processes (`python -m dbrx_serve ... STAGE`), for `dbrx serve all` and
`dbrx demo`: each started, its address read from its `listening on HOST:PORT` line (and
`metrics on URL` before it), its later output passed on prefixed with its name; all stopped
together with SIGTERM (SIGKILL for one still alive after the grace period). Children run in
their own process group, so a terminal's Ctrl-C reaches only the launcher, which stops them in
order; on Linux each also gets SIGTERM if the launcher dies without stopping them (no orphans)."""

import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from dbrx_serve.shared.errors import BadState
from dbrx_serve.shared.parent_death import dying_with_parent

LISTENING = re.compile(r"listening on (\S+)")
METRICS = re.compile(r"metrics on (\S+)")
WORKER_READY = re.compile(r"worker \S+ on \S+")
STOP_SECONDS = 30.0  # a child's grace after SIGTERM (the servers drain for 10 s) before SIGKILL


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    address: str | None = None
    metrics: str | None = None
    lines: list[str] = field(default_factory=list)  # what it printed before it was ready

    @property
    def pid(self) -> int:
        return self.process.pid


class Launcher:
    """`with Launcher(dbrx_flags) as launcher: launcher.start(...)`; leaving stops every child."""

    def __init__(self, dbrx_flags: tuple[str, ...] = (), quiet: bool = False):
        self.dbrx_flags, self.quiet = dbrx_flags, quiet
        self.children: list[Child] = []

    def __enter__(self) -> "Launcher":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def spawn(self, name: str, *argv: object) -> Child:
        """Start `dbrx ARGV` (not waiting for it)."""
        command = [sys.executable, "-m", "dbrx_serve", *self.dbrx_flags, *map(str, argv)]
        process = subprocess.Popen(dying_with_parent(command), stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL if self.quiet else None,
                                   stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        child = Child(name, process)
        self.children.append(child)
        return child

    def ready(self, child: Child, pattern: re.Pattern = LISTENING) -> Child:
        """Read the child's output until `pattern`; then pass the rest on in a thread."""
        for line in child.process.stdout:
            child.lines.append(line)
            if match := METRICS.search(line):
                child.metrics = match.group(1)
            if match := pattern.search(line):
                child.address = match.group(1) if pattern.groups else None
                threading.Thread(target=self._pass_on, args=(child,), daemon=True).start()
                return child
        raise BadState(f"the {child.name} process exited before it was ready (exit status {child.process.wait()})")

    def start(self, name: str, *argv: object, pattern: re.Pattern = LISTENING) -> Child:
        return self.ready(self.spawn(name, *argv), pattern)

    def _pass_on(self, child: Child) -> None:
        for line in child.process.stdout:
            if not self.quiet:
                print(f"[{child.name}] {line}", end="", flush=True)

    def dead(self) -> Child | None:
        """A child that has exited, if any."""
        return next((child for child in self.children if child.process.poll() is not None), None)

    def stop(self, seconds: float = STOP_SECONDS) -> None:
        """SIGTERM to every child still running, newest first; SIGKILL to any left after `seconds`."""
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + seconds
        for child in reversed(self.children):
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()


def wait_for_address(process: subprocess.Popen, stage: str) -> str:
    """The address a `dbrx serve STAGE` process started elsewhere prints (`listening on HOST:PORT`)."""
    for line in process.stdout:
        if match := LISTENING.search(line):
            return match.group(1)
    raise BadState(f"the {stage} service exited before listening (exit {process.wait()})")
