"""`dbrx run --engine_dir` (in this process) and `dbrx run --server HOST:PORT`
(a running inference service): run.py's flags on a built engine. All prompts
run together (continuous batching), or one by one with `--streaming`,
printing run.py's `Input [Text i]:` / `Output [Text i Beam 0]:` lines like the
reference path (`--hf_model_dir`), whose greedy output it reproduces.

`--tokenizer_dir` gives the engine its tokenizer (end ids, the unassigned-id
mask, stop words, text) when its own tokenizer/ is missing, or replaces it.
With `--server`, text goes to the service as text unless `--tokenizer_dir`
is given, in which case it is encoded (and cut to `--max_input_length`) here
as in-process."""

import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from dbrx_serve.services.inference.engine import Engine
from dbrx_serve.services.inference.params import SamplingParams
from dbrx_serve.shared.errors import InvalidInput

from .run import DEFAULT_TEXT, load_tokenizer_if_any, read_prompts, show


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


@contextmanager
def opened_engine(args):
    """The engine the flags name: in this process, or a service (--server)."""
    if args.server:
        from .remote_engine import RemoteEngine

        with RemoteEngine(args.server, args.auth_token, args.tls_ca) as remote:
            yield remote
    else:
        budget = {"gpu_memory_fraction": args.gpu_memory_fraction, "memory_budget_bytes": args.memory_budget_bytes}
        engine = Engine.from_dir(args.engine_dir, device_of(args.device), tokenizer_dir=args.tokenizer_dir,
                                 **{name: value for name, value in budget.items() if value is not None})
        print(engine.runner.memory.describe(), file=sys.stderr, flush=True)
        yield engine


def local_tokenizer(args, engine):
    """The tokenizer that reads prompts here: the engine's in-process, --tokenizer_dir's for a service."""
    if not args.server:
        return engine.tokenizer
    return load_tokenizer_if_any(Path(args.tokenizer_dir), needed=True) if args.tokenizer_dir else None


def prompts_of(args, tokenizer, engine) -> list:
    """Token ids (cut to --max_input_length), or, for a service with no tokenizer here, the texts."""
    if tokenizer is None and args.input_file is None:
        if not args.server:
            raise InvalidInput(f"{args.engine_dir} has no tokenizer/: give --tokenizer_dir or --input_file")
        return list(args.input_text or [DEFAULT_TEXT])
    return read_prompts(args, tokenizer, engine.vocab_size)


def world_status(args) -> int | None:
    """For an engine of several ranks: None on rank 0 (go on), else the exit status of this rank's part
    or of the MPI world started here (services/inference/launch.py). None for --server and one rank."""
    if args.server:
        return None
    from dbrx_serve.services.inference.launch import as_world
    return as_world(args.argv, args.engine_dir, args.hostfile)


def run_engine(args) -> int:
    if (status := world_status(args)) is not None:
        return status
    with opened_engine(args) as engine:
        tokenizer = local_tokenizer(args, engine)
        prompts = prompts_of(args, tokenizer, engine)
        printing = streamed if args.streaming else batched
        outputs = printing(engine, prompts, sampling_params(args), tokenizer)
    if args.output_csv:
        Path(args.output_csv).write_text("".join(",".join(map(str, ids)) + "\n" for ids in outputs))
    return 0


def shown(prompt, tokenizer) -> str:
    return prompt if isinstance(prompt, str) else show(tokenizer, prompt)


def batched(engine, prompts, params: SamplingParams, tokenizer) -> list[list[int]]:
    results = engine.generate(prompts, params)
    for i, (prompt, result) in enumerate(zip(prompts, results)):
        print(f'Input [Text {i}]: "{shown(prompt, tokenizer)}"')
        text = result.text if engine.has_tokenizer else show(tokenizer, list(result.output_ids))
        print(f'Output [Text {i} Beam 0]: "{text}"', flush=True)
    return [list(r.output_ids) for r in results]


def streamed(engine, prompts, params: SamplingParams, tokenizer) -> list[list[int]]:
    outputs = []
    for i, prompt in enumerate(prompts):
        print(f'Input [Text {i}]: "{shown(prompt, tokenizer)}"', flush=True)
        print(f'Output [Text {i} Beam 0]: "', end="", flush=True)
        ids = []
        for out in engine.stream(prompt, params):
            ids += out.token_ids
            print(out.text_delta if engine.has_tokenizer else "", end="", flush=True)
        print(("" if engine.has_tokenizer else show(tokenizer, ids)) + '"', flush=True)
        outputs.append(ids)
    return outputs
