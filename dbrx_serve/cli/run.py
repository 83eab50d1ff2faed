"""`dbrx run`: TensorRT-LLM's run.py on our stack. `--hf_model_dir` runs the
reference forward pass straight on a HF checkpoint (greedy), the ground truth
that engine outputs are compared with; `--engine_dir` runs a built engine in
this process, `--server HOST:PORT` a running inference service
(run_engine.py)."""

import json
from pathlib import Path

import torch

from dbrx_serve.services.inference.memory import add_memory_args
from dbrx_serve.shared.errors import InvalidInput, NotFound
from dbrx_serve.shared.reference import greedy_tokens, load_hf_model, torch_dtype

DEFAULT_TEXT = "Born in north-east France, Soyer trained as a"


def add_parser(subparsers):
    p = subparsers.add_parser("run", help="generate from an engine or (reference) a HF checkpoint, as run.py")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--engine_dir")
    source.add_argument("--hf_model_dir", help="reference forward pass on a HF checkpoint, no engine")
    source.add_argument("--server", metavar="HOST:PORT", help="a running inference service (dbrx serve inference)")
    p.add_argument("--tokenizer_dir", default=None,
                   help="default: the model or engine directory; an engine without tokenizer/ takes its end ids, "
                        "unassigned-id mask and stop words from here")
    p.add_argument("--max_output_len", type=int, required=True)
    p.add_argument("--max_input_length", type=int, default=923, help="prompts are cut to their first N tokens")
    inputs = p.add_mutually_exclusive_group()
    inputs.add_argument("--input_text", nargs="+", default=None)
    inputs.add_argument("--input_file", default=None, help=".csv of token ids, one prompt per line")
    p.add_argument("--output_csv", default=None, help="write the new token ids, one line per input")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=1, help="1: greedy (run.py's default)")
    p.add_argument("--top_p", type=float, default=0.0)
    p.add_argument("--random_seed", type=int, default=0)
    p.add_argument("--end_id", type=int, nargs="+", default=None, help="stop ids (default: generation_config.json)")
    p.add_argument("--stop_words", nargs="+", default=None, help="--engine_dir/--server only: stop strings")
    p.add_argument("--streaming", action="store_true", help="print tokens as they are generated")
    p.add_argument("--device", default="auto", help="--engine_dir only: cpu, cuda[:N], or auto (cuda if present)")
    add_memory_args(p)  # --engine_dir only
    p.add_argument("--hostfile", default=None, help="--engine_dir of several ranks: the hosts of the MPI world "
                   "this command starts (passed to mpiexec)")
    p.add_argument("--dtype", default="float32", help="--hf_model_dir only: float32, float16 or bfloat16")
    p.add_argument("--auth_token", default=None, help="--server only: bearer token")
    p.add_argument("--tls_ca", default=None, help="--server only: PEM file of the CA that signed its certificate")
    p.set_defaults(func=run)
    return p


def main(argv: list[str]) -> int:
    """Run with `dbrx run` flags (used by `dbrx demo`)."""
    import argparse
    subparsers = argparse.ArgumentParser(prog="dbrx").add_subparsers()
    args = add_parser(subparsers).parse_args(argv)
    args.command, args.argv = "run", ["run", *argv]
    return run(args)


def run(args) -> int:
    if args.engine_dir or args.server:
        from .run_engine import run_engine
        return run_engine(args)
    check_greedy(args)
    model_dir = Path(args.hf_model_dir)
    model = load_hf_model(model_dir, torch_dtype(args.dtype))
    tokenizer = load_tokenizer_if_any(Path(args.tokenizer_dir or model_dir), needed=args.input_file is None)
    prompts = read_prompts(args, tokenizer, model.cfg.vocab_size)
    end_ids = args.end_id if args.end_id is not None else default_end_ids(model_dir, tokenizer)
    banned = torch.tensor(tokenizer.unassigned_mask(model.cfg.vocab_size)) if tokenizer else None
    outputs = []
    for i, prompt in enumerate(prompts):
        print(f'Input [Text {i}]: "{show(tokenizer, prompt)}"', flush=True)
        tokens = generate_printing(model, prompt, args, end_ids, banned, tokenizer, i)
        outputs.append([t for t in tokens if t not in end_ids])
    if args.output_csv:
        Path(args.output_csv).write_text("".join(",".join(map(str, ids)) + "\n" for ids in outputs))
    return 0


def check_greedy(args) -> None:
    greedy = args.top_k == 1 or args.temperature == 0
    if not greedy:
        raise InvalidInput("the reference path (--hf_model_dir) is greedy only: leave --top_k at 1 "
                           "(or set --temperature 0), or sample with --engine_dir")
    if args.max_output_len < 1:
        raise InvalidInput(f"--max_output_len must be at least 1, got {args.max_output_len}")
    if args.stop_words:
        raise InvalidInput("--stop_words needs --engine_dir (the reference path stops at end ids only)")


def generate_printing(model, prompt, args, end_ids, banned, tokenizer, index: int) -> list[int]:
    tokens = []
    stream = tokenizer.detokenizer() if (tokenizer and args.streaming) else None
    if stream:
        print(f'Output [Text {index} Beam 0]: "', end="", flush=True)
    for token in greedy_tokens(model, prompt, args.max_output_len, end_ids, banned):
        tokens.append(token)
        if stream and token not in end_ids:
            print(stream.push(token), end="", flush=True)
    if stream:
        print(stream.finish() + '"', flush=True)
    else:
        print(f'Output [Text {index} Beam 0]: "{show(tokenizer, [t for t in tokens if t not in end_ids])}"')
    return tokens


def load_tokenizer_if_any(tokenizer_dir: Path, needed: bool):
    from dbrx_serve.services.tokenizer.tokenizer import load_tokenizer
    try:
        return load_tokenizer(tokenizer_dir)
    except (InvalidInput, NotFound):  # no tokenizer files: fine for token-id input
        if needed:
            raise
        return None


def read_prompts(args, tokenizer, vocab_size: int) -> list[list[int]]:
    if args.input_file:
        prompts = read_ids_csv(Path(args.input_file))
    else:
        prompts = [tokenizer.encode_text(text) for text in (args.input_text or [DEFAULT_TEXT])]
    for i, ids in enumerate(prompts):
        if not ids:
            raise InvalidInput(f"prompt {i} is empty: give at least one token")
        if max(ids) >= vocab_size:
            raise InvalidInput(f"prompt {i} holds id {max(ids)}, outside the model's vocabulary of {vocab_size}")
    return [ids[:args.max_input_length] for ids in prompts]


def read_ids_csv(path: Path) -> list[list[int]]:
    if not path.is_file():
        raise InvalidInput(f"--input_file {path} not found")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            prompts.append([int(x) for x in line.split(",") if x.strip()])
        except ValueError:
            raise InvalidInput(f"{path} line {number}: expected comma-separated token ids, got {line!r}") from None
        if any(i < 0 for i in prompts[-1]):
            raise InvalidInput(f"{path} line {number}: token ids cannot be negative")
    if not prompts:
        raise InvalidInput(f"{path} holds no prompts")
    return prompts


def default_end_ids(model_dir: Path, tokenizer) -> list[int]:
    """generation_config.json's eos_token_id (int or list), else config.json's, else the tokenizer's."""
    for name in ("generation_config.json", "config.json"):
        path = model_dir / name
        if path.is_file():
            eos = json.loads(path.read_text()).get("eos_token_id")
            if eos is not None:
                return [eos] if isinstance(eos, int) else list(eos)
    return list(tokenizer.stop_ids) if tokenizer else []


def show(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids) if tokenizer else ",".join(map(str, ids))
