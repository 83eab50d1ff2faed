"""Faults the fault tests inject, each real, none a mock: a process's address space or file
sizes limited (resource limits), a directory read-only for one process, the job store held
locked, a throwaway PostgreSQL cluster stopped and started again."""

import contextlib
import json
import os
import pwd
import resource
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

WAIT = 120  # seconds a fault test waits for anything before calling it a hang

# A DBRX config whose embedding alone is 1 GiB of float32: mapping its file needs that much
# address space, which a process limited by `limit_address_space` does not have.
HUGE_CONFIG = {"model_type": "dbrx", "vocab_size": 65536, "d_model": 4096, "n_heads": 32, "n_layers": 1,
               "max_seq_len": 2048, "attn_config": {"kv_n_heads": 8}, "torch_dtype": "float32",
               "ffn_config": {"ffn_hidden_size": 128, "moe_num_experts": 4, "moe_top_k": 2}}


def wait_for(condition, what: str, interval: float = 0.02):
    """condition()'s first true value, polled; fails the test after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)
    return value


def ended(store, job_id: str):
    """The job once it has ended, else None (for wait_for)."""
    job = store.get(job_id)
    return job if job.state.is_terminal else None


def start_worker_process(stage: str, database_url: str, lease_seconds: float,
                         prefix: list[str] = ()) -> subprocess.Popen:
    """`dbrx worker STAGE`, run under `prefix` (a command that execs the rest)."""
    return subprocess.Popen([*prefix, sys.executable, "-m", "dbrx_serve.cli.main", "worker", stage,
                             "--database_url", database_url, "--lease_seconds", str(lease_seconds),
                             "--poll_seconds", "0.05"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def write_huge_model(directory: Path) -> Path:
    """A HF DBRX directory with one 1 GiB safetensors file, sparse (no disk used): its header is
    valid, its tensor all zeros."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(HUGE_CONFIG))
    shape = [HUGE_CONFIG["vocab_size"], HUGE_CONFIG["d_model"]]
    size = shape[0] * shape[1] * 4
    header = json.dumps({"transformer.wte.weight": {"dtype": "F32", "shape": shape, "data_offsets": [0, size]}})
    header += " " * (-len(header) % 8)
    with open(directory / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header.encode())
        f.truncate(f.tell() + size)
    return directory


def limit_address_space(headroom: int) -> None:
    """From now on this process may map at most `headroom` more bytes (RLIMIT_AS)."""
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (kib * 1024 + headroom, resource.getrlimit(resource.RLIMIT_AS)[1]))


def file_size_limit(nbytes: int) -> list[str]:
    """A command prefix under which the process may write no file past `nbytes` (RLIMIT_FSIZE).
    Python ignores SIGXFSZ, so a write past it fails with EFBIG, as a full disk fails one with ENOSPC.
    (Not a preexec_fn: Python in a forked child can abort beside gRPC threads, shared/parent_death.py.)"""
    script = "import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2); " \
             "os.execvp(sys.argv[2], sys.argv[2:])"
    return [sys.executable, "-c", script, str(nbytes)]


def read_only_prefix(directory: Path) -> list[str]:
    """A command prefix under which `directory` is read-only: its permissions for a user other
    than root (who writes anyway); for root, a read-only bind mount in a mount namespace of the
    command's own. Skips the test when neither can be had."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return []
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(directory)]
    if shutil.which("unshare") is None or subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root without mount namespaces (unshare): no way to make a directory read-only")
    return prefix


@contextlib.contextmanager
def store_held(database_url: str, job_id: str):
    """Hold what a worker must lock to report on `job_id`: the job's row (PostgreSQL), the
    whole file (SQLite, its writer lock). The worker blocks at its next report until released."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        connection = sqlite3.connect(url.database, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            yield
            connection.execute("ROLLBACK")
        finally:
            connection.close()
        return
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})
            yield
    finally:
        engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    """A throwaway PostgreSQL cluster (initdb, pg_ctl; trust auth, no fsync) on a free local
    port, which a test may stop and start. PostgreSQL refuses to run as root: then it runs as
    the `postgres` user, or `nobody`."""

    def __init__(self):
        self.initdb, self.pg_ctl = _postgres_binary("initdb"), _postgres_binary("pg_ctl")
        self.root = Path(tempfile.mkdtemp(prefix="dbrx-pg-"))
        self.port = free_port()
        self.user = _unprivileged_user() if os.geteuid() == 0 else None
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        try:
            self._run(self.initdb, "-D", self.data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    @property
    def data(self) -> str:
        return str(self.root / "data")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(self.pg_ctl, "-D", self.data, "-l", str(self.root / "log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, as in a restart or a failover."""
        self._run(self.pg_ctl, "-D", self.data, "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        subprocess.run([self.pg_ctl, "-D", self.data, "-m", "immediate", "stop"], capture_output=True,
                       cwd=self.root, **self._as_user())
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, *command: str) -> None:
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root, timeout=WAIT,
                              **self._as_user())
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr or done.stdout}")

    def _as_user(self) -> dict[str, int]:
        """subprocess's arguments that run a command as the unprivileged user, if there is one."""
        return {} if self.user is None else {"user": self.user.pw_uid, "group": self.user.pw_gid}


def _postgres_binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/local/bin")
    if found is None:
        pytest.skip(f"{name} is not installed: no throwaway PostgreSQL cluster for this test")
    return found


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.skip("running as root with neither a postgres nor a nobody user to run PostgreSQL as")


def sigkill_mid_work(store, job_id: str, stage: str, database_url: str, lease_seconds: float, started) -> None:
    """A `dbrx worker STAGE` process leases the job; with the job store held (its next report waits,
    so it cannot publish) it is SIGKILLed once `started()` (its temporary output exists)."""
    from dbrx_serve.shared.jobstore import JobState

    victim = start_worker_process(stage, database_url, lease_seconds)
    try:
        wait_for(lambda: store.get(job_id).state is JobState.RUNNING, "a worker to lease the job", 0.01)
        with store_held(database_url, job_id):
            wait_for(started, f"the {stage}'s temporary output")
            victim.send_signal(signal.SIGKILL)
            victim.wait(WAIT)
    finally:
        victim.kill()
        victim.wait(WAIT)
