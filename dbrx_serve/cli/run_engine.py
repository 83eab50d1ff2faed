"""`dbrx run --engine_dir`: run.py's flags on a built engine. All prompts run
together (continuous batching), or one by one with `--streaming`, printing
run.py's `Input [Text i]:` / `Output [Text i Beam 0]:` lines like the
reference path (`--hf_model_dir`), whose greedy output it reproduces."""

from pathlib import Path

import torch

from dbrx_serve.services.inference.engine import Engine
from dbrx_serve.services.inference.params import SamplingParams
from dbrx_serve.shared.errors import InvalidInput

from .run import load_tokenizer_if_any, read_prompts, show


def sampling_params(args) -> SamplingParams:
    """run.py's flags: top_k 1 is greedy; top_p 0 means off (our 1.0); --random_seed seeds each request."""
    if args.max_output_len < 1:
        raise InvalidInput(f"--max_output_len must be at least 1, got {args.max_output_len}")
    return SamplingParams(max_new_tokens=args.max_output_len, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p or 1.0, seed=args.random_seed, stop=tuple(args.stop_words or ()),
                          end_id=tuple(args.end_id) if args.end_id is not None else None)


def device_of(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def run_engine(args) -> int:
    engine = Engine.from_dir(args.engine_dir, device_of(args.device))
    tokenizer = engine.tokenizer
    if args.tokenizer_dir:
        tokenizer = load_tokenizer_if_any(Path(args.tokenizer_dir), needed=True)
    elif tokenizer is None and args.input_file is None:
        raise InvalidInput(f"{args.engine_dir} has no tokenizer/: give --tokenizer_dir or --input_file")
    prompts = read_prompts(args, tokenizer, engine.vocab_size)
    params = sampling_params(args)
    outputs = streamed(engine, prompts, params, tokenizer) if args.streaming else \
        batched(engine, prompts, params, tokenizer)
    if args.output_csv:
        Path(args.output_csv).write_text("".join(",".join(map(str, ids)) + "\n" for ids in outputs))
    return 0


def batched(engine: Engine, prompts, params: SamplingParams, tokenizer) -> list[list[int]]:
    results = engine.generate(prompts, params)
    for i, (prompt, result) in enumerate(zip(prompts, results)):
        print(f'Input [Text {i}]: "{show(tokenizer, prompt)}"')
        print(f'Output [Text {i} Beam 0]: "{output_text(engine, tokenizer, result)}"', flush=True)
    return [list(r.output_ids) for r in results]


def own_text(engine: Engine, tokenizer) -> bool:
    """Whether to print the engine's text (cut at stop strings) rather than a --tokenizer_dir's decode."""
    return tokenizer is not None and tokenizer is engine.tokenizer


def output_text(engine: Engine, tokenizer, result) -> str:
    return result.text if own_text(engine, tokenizer) else show(tokenizer, list(result.output_ids))


def streamed(engine: Engine, prompts, params: SamplingParams, tokenizer) -> list[list[int]]:
    outputs = []
    for i, prompt in enumerate(prompts):
        print(f'Input [Text {i}]: "{show(tokenizer, prompt)}"', flush=True)
        print(f'Output [Text {i} Beam 0]: "', end="", flush=True)
        engine.add_request(prompt, params)
        ids = []
        while engine.has_unfinished:
            for out in engine.step():
                ids += out.token_ids
                print(out.text_delta if own_text(engine, tokenizer) else "", end="", flush=True)
        print(("" if own_text(engine, tokenizer) else show(tokenizer, ids)) + '"', flush=True)
        outputs.append(ids)
    return outputs
