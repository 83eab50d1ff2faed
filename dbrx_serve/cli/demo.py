"""`dbrx demo`: the main job on embedded defaults. Until the pipeline stages
exist it makes a tiny random DBRX with tokenizer files and prints a greedy
continuation through the reference forward pass."""

import tempfile
from pathlib import Path

from dbrx_serve.shared.testing import TinySpec, save_tiny_model

from . import run as run_command


def add_parser(subparsers):
    p = subparsers.add_parser("demo", help="the main job on embedded defaults (tiny DBRX made on the spot)")
    p.add_argument("--workdir", default=None, help="where to write the tiny model (default: a temporary folder)")
    p.add_argument("--input_text", nargs="+", default=["Born in north-east France, Soyer trained as a"])
    p.add_argument("--max_output_len", type=int, default=16)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.workdir or tmp) / "tiny-dbrx"
        print(f"making a tiny random DBRX in {model_dir}", flush=True)
        save_tiny_model(model_dir, TinySpec())
        argv = ["--hf_model_dir", str(model_dir), "--max_output_len", str(args.max_output_len),
                "--input_text", *args.input_text]
        return run_command.main(argv)
