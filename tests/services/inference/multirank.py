"""Multi-rank engines on the CPU, for the world tests: real `mpiexec`, real processes and servers,
generous timeouts (a hang fails a test instead of blocking CI), no timed assertions.

Engines are the conftest's (`engine_dir(name)`), converted with these mappings from the tiny DBRX
(4 heads, 2 kv heads, 4 experts, 2 layers)."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from dbrx_serve.cli.launcher import wait_for_address
from dbrx_serve.services.inference.launch import find_mpiexec
from dbrx_serve.services.inference.params import SamplingParams
from dbrx_serve.services.inference.supervisor import SUPERVISED
from dbrx_serve.services.inference.world import NVLINK_MULTICAST_OFF
from dbrx_serve.shared.testing import TinySpec, make_hf_model

from .helpers import assert_same_greedy
from .served import SERVING, health
from .test_engine_greedy import transformers_greedy

WORLD_ENGINES = {  # name in conftest.ENGINES -> world size
    "tp2": 2, "tp4": 4, "pp2": 2, "tp2pp2": 4, "ep2": 2, "ep4": 4, "moe_tp2ep2": 4,
}
WAIT = 240  # seconds a world may take to start, answer or end on a loaded 2-core machine
ENV = {**os.environ, "OMP_NUM_THREADS": "1", **NVLINK_MULTICAST_OFF}
MARK = "DBRX_TEST_WORLD"  # each world's processes carry a mark of their own in their environment
PROMPTS = [[10, 20, 30, 40], [300, 5, 7], list(range(1, 12))]
MAX_NEW = 12
NEVER_SAMPLED = 100256  # an unassigned id as the only end id: every request runs MAX_NEW tokens


def one_rank_and_transformers_ids(fp32_engine, banned) -> tuple[list, list]:
    """The greedy ids of PROMPTS from the one-rank engine (batched, as a world runs them) and from
    transformers' generate."""
    params = SamplingParams(max_new_tokens=MAX_NEW, temperature=0, end_id=(NEVER_SAMPLED,))
    hf = make_hf_model(TinySpec())
    return ([list(r.output_ids) for r in fp32_engine.generate(PROMPTS, params)],
            [transformers_greedy(hf, p, MAX_NEW, banned) for p in PROMPTS])


def assert_same_as(expected: tuple[list, list], got: list[list[int]], reference_model, banned) -> None:
    """Each prompt's ids are the one-rank engine's and transformers' (up to a float32 near-tie)."""
    assert len(got) == len(PROMPTS)
    for prompt, tokens, one_rank, hf in zip(PROMPTS, got, *expected):
        assert len(tokens) == MAX_NEW
        assert_same_greedy(tokens, one_rank, prompt, reference_model, banned)
        assert_same_greedy(tokens, hf, prompt, reference_model, banned)


def dbrx_command(*args, ranks: int | None = None) -> list[str]:
    """`python -m dbrx_serve ARGS`, under `mpiexec -n RANKS` when given (else it starts its own world)."""
    command = [sys.executable, "-m", "dbrx_serve", *map(str, args)]
    return [find_mpiexec(), "-disable-auto-cleanup", "-n", str(ranks), *command] if ranks else command


def marked_environment() -> tuple[dict[str, str], str]:
    mark = uuid.uuid4().hex
    return {**ENV, MARK: mark}, mark


def run_dbrx(*args, ranks: int | None = None) -> subprocess.CompletedProcess:
    """The command to its end; `.world` is the mark of its processes (`assert_all_gone`)."""
    env, mark = marked_environment()
    result = subprocess.run(dbrx_command(*args, ranks=ranks), env=env, capture_output=True, text=True, timeout=WAIT)
    result.world = mark
    return result


def write_prompts(path: Path) -> Path:
    path.write_text("".join(",".join(map(str, p)) + "\n" for p in PROMPTS))
    return path


def read_ids(path: Path) -> list[list[int]]:
    return [[int(x) for x in line.split(",")] for line in path.read_text().splitlines()]


def environment(pid: int) -> list[bytes]:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return []


def running(mark: str) -> set[int]:
    """The processes (zombies aside) that carry this world's mark, wherever they were reparented."""
    found = set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError):
            if (entry.name.isdigit() and f"{MARK}={mark}".encode() in environment(int(entry.name))
                    and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"):
                found.add(int(entry.name))
    return found


def rank_process(mark: str, rank: int) -> int:
    """The process that is rank `rank` of the world (not its supervisor)."""
    for pid in running(mark):
        if {f"PMI_RANK={rank}".encode(), f"{SUPERVISED}=1".encode()} <= set(environment(pid)):
            return pid
    raise AssertionError(f"no rank {rank} among the world's processes {sorted(running(mark))}")


def assert_all_gone(mark: str) -> None:
    """Every process of the world ends (waited for up to WAIT seconds): nothing is left behind."""
    deadline = time.monotonic() + WAIT
    while running(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(mark), f"processes left behind: {sorted(running(mark))}"


def wait_until_serving(address: str) -> None:
    deadline = time.monotonic() + WAIT
    while health(address) != SERVING:
        assert time.monotonic() < deadline, "the world never became SERVING"
        time.sleep(0.05)


@contextlib.contextmanager
def served_world(engine_dir: Path, ranks: int | None = None, *flags):
    """`dbrx serve inference` on a free port as an MPI world (its own, or `mpiexec -n RANKS`'s);
    yields (process, address, the world's mark) once health says SERVING. Whatever a test leaves
    running is killed at the end."""
    command = dbrx_command("serve", "inference", "--engine_dir", engine_dir, "--port", 0, "--device", "cpu",
                           *flags, ranks=ranks)
    env, mark = marked_environment()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stderr_lines = []  # read all along, so that a chatty world never blocks on a full pipe
    threading.Thread(target=lambda: process.stderr_lines.extend(process.stderr), daemon=True).start()
    try:
        address = wait_for_address(process, "inference")
        wait_until_serving(address)
        yield process, address, mark
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(WAIT)
        finally:
            for pid in running(mark):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
