"""`dbrx demo`: the main job on embedded defaults. It makes a tiny random DBRX
(transformers, with DBRX's tokenizer layout), starts a converter and a builder
service on free local ports over one SQLite job store, converts and builds
through them (progress bars follow the jobs), then streams a greedy
continuation from the engine and, for comparison, from the reference forward
pass on the HF checkpoint. Everything lands in --workdir (default: a
temporary folder, removed afterwards)."""

import re
import subprocess
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path

from dbrx_serve.shared.errors import BadState

DEFAULT_TEXT = "Born in north-east France, Soyer trained as a"
LISTENING = re.compile(r"listening on (\S+)")


def add_parser(subparsers):
    p = subparsers.add_parser("demo", help="the main job on embedded defaults (tiny DBRX made on the spot)")
    p.add_argument("--workdir", default=None, help="where to write model, checkpoint, engine and job store")
    p.add_argument("--input_text", nargs="+", default=[DEFAULT_TEXT])
    p.add_argument("--max_output_len", type=int, default=16)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    with ExitStack() as stack:
        work = Path(args.workdir) if args.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        model = make_model(work / "tiny-dbrx")
        store = f"sqlite:///{work / 'jobs.db'}"
        converter = stack.enter_context(service("converter", store))
        builder = stack.enter_context(service("builder", store))
        step("convert", "convert", "--model_dir", model, "--output_dir", work / "checkpoint",
             "--dtype", "float32", "--overwrite", "--server", converter)
        step("build", "build", "--checkpoint_dir", work / "checkpoint", "--output_dir", work / "engine",
             "--max_batch_size", 8, "--max_input_len", 128, "--max_seq_len", 256, "--overwrite", "--server", builder)
        generation = ["--max_output_len", args.max_output_len, "--input_text", *args.input_text]
        step("run the engine, streaming", "run", "--engine_dir", work / "engine", "--streaming", *generation)
        step("the reference forward pass on the HF checkpoint", "run", "--hf_model_dir", model, *generation)
    return 0


def make_model(path: Path) -> Path:
    from dbrx_serve.shared.testing import TinySpec, save_tiny_model

    print(f"== a tiny random DBRX in {path}", flush=True)
    save_tiny_model(path, TinySpec())
    return path


def step(title: str, *argv) -> None:
    """One `dbrx` subcommand, in this process."""
    from .main import main

    print(f"== {title}", flush=True)
    if main([str(a) for a in argv]) != 0:
        raise BadState(f"the demo stopped: `dbrx {argv[0]}` failed (see above)")


@contextmanager
def service(stage: str, database_url: str):
    """`dbrx serve STAGE` on a free port with one local worker; yields its address."""
    command = [sys.executable, "-m", "dbrx_serve", "serve", stage, "--port", "0", "--local_workers", "1",
               "--database_url", database_url]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address = wait_for_address(process, stage)
        print(f"== {stage} service on {address}", flush=True)
        yield address
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_for_address(process: subprocess.Popen, stage: str) -> str:
    for line in process.stdout:
        if match := LISTENING.search(line):
            return match.group(1)
    raise BadState(f"the {stage} service exited before listening (exit {process.wait()})")
