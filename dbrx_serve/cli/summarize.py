"""`dbrx summarize`: TensorRT-LLM's summarize.py on our engine, as
docs/trtllm-checkpoint.md specifies it: CNN/DailyMail articles from a jsonl
(`--dataset`, in file order), the prompt `article + ' TL;DR: '` (stripped,
" n't" -> "n't") encoded and cut from the left to `--max_input_length`,
greedy up to `--output_len` tokens stopping at the tokenizer's end id,
`--batch_size` articles at a time (one continuous batch) for `--max_ite`
batches, one warm-up batch outside the timer, tokens per second, and ROUGE.

The engine runs in this process (`--engine_dir`) or in a running service
(`--server`); `--test_hf` also runs transformers on the HF model over the same
articles. The printed lines are summarize.py's, with our backend's name."""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dbrx_serve.services.inference.memory import add_memory_args
from dbrx_serve.shared.cnn_dailymail import prompt_of, read_records
from dbrx_serve.shared.errors import InvalidInput

HF_NAME = "Hugging Face"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
RULE = "-" * 57


def add_parser(subparsers):
    p = subparsers.add_parser("summarize", help="summarization benchmark with ROUGE, as summarize.py")
    engine = p.add_mutually_exclusive_group(required=True)
    engine.add_argument("--engine_dir", help="a built engine, run in this process")
    engine.add_argument("--server", metavar="HOST:PORT", help="a running inference service (dbrx serve inference)")
    p.add_argument("--hf_model_dir", required=True, help="the HF model: its tokenizer, and the model for --test_hf")
    p.add_argument("--tokenizer_dir", default=None, help="default: --hf_model_dir")
    p.add_argument("--test_hf", action="store_true", help="also run transformers on --hf_model_dir")
    p.add_argument("--dataset", default=None, help="jsonl with 'article' and 'highlights' (CNN/DailyMail)")
    p.add_argument("--max_ite", type=int, default=20, help="batches to evaluate")
    p.add_argument("--output_len", type=int, default=100)
    p.add_argument("--max_input_length", type=int, default=923, help="prompt tokens kept, from the end")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--device", default="auto", help="cpu, cuda[:N] or auto, for --engine_dir and --test_hf")
    add_memory_args(p)  # --engine_dir only
    p.add_argument("--hf_dtype", default="float32", help="--test_hf: float32, float16 or bfloat16")
    p.add_argument("--hostfile", default=None, help="--engine_dir of several ranks: the hosts of the MPI world "
                   "this command starts (passed to mpiexec)")
    p.add_argument("--auth_token", default=None, help="--server only: bearer token")
    p.add_argument("--tls_ca", default=None, help="--server only: PEM file of the CA that signed its certificate")
    p.set_defaults(func=run)
    return p


@dataclass(frozen=True)
class Summary:
    text: str
    num_tokens: int  # generated, up to the end id (not counted)


@dataclass(frozen=True)
class Evaluation:
    name: str
    seconds: float
    num_tokens: int
    scores: dict[str, float]


Summarizer = Callable[[list[dict]], list[Summary]]  # a batch of records -> one summary each


def run(args) -> int:
    from dbrx_serve.services.tokenizer.tokenizer import load_tokenizer

    from .run_engine import opened_engine, world_status

    if (status := world_status(args)) is not None:  # an engine of several ranks (README: multi-rank)
        return status
    check_counts(args)
    tokenizer = load_tokenizer(args.tokenizer_dir or args.hf_model_dir)
    records = read_records(args.dataset, ("article", "highlights"), args.batch_size * args.max_ite, "--dataset")
    batches = [records[i:i + args.batch_size] for i in range(0, len(records), args.batch_size)]
    with opened_engine(args) as engine:
        evaluations = [evaluate(backend_name(engine), engine_summarizer(engine, tokenizer, args), batches)]
    if args.test_hf:
        evaluations.append(evaluate(HF_NAME, hf_summarizer(tokenizer, args), batches))
    for evaluation in evaluations:
        print_evaluation(evaluation)
    return 0


def check_counts(args) -> None:
    if not args.dataset:
        raise InvalidInput("give --dataset FILE: a jsonl of CNN/DailyMail records with 'article' and 'highlights' "
                           "(summarize.py downloads the dataset; this command never touches the network)")
    for name in ("max_ite", "output_len", "max_input_length", "batch_size"):
        if getattr(args, name) < 1:
            raise InvalidInput(f"--{name} must be at least 1, got {getattr(args, name)}")


def backend_name(engine) -> str:
    """The backend that ran: the service's own word for it, or this runtime's."""
    from dbrx_serve.services.inference.engine_dir import BACKEND

    from .remote_engine import RemoteEngine

    return engine.info.backend if isinstance(engine, RemoteEngine) else BACKEND


def prompt_ids(tokenizer, article: str, max_input_length: int) -> list[int]:
    """summarize.py's input: the prompt's ids, cut from the left (the end, with "TL;DR:", is kept)."""
    return tokenizer.encode_text(prompt_of(article))[-max_input_length:]


def engine_summarizer(engine, tokenizer, args) -> Summarizer:
    from dbrx_serve.services.inference.params import SamplingParams

    params = SamplingParams(max_new_tokens=args.output_len, temperature=0, end_id=(tokenizer.eos_id,))

    def summarize(batch: list[dict]) -> list[Summary]:
        prompts = [prompt_ids(tokenizer, record["article"], args.max_input_length) for record in batch]
        results = engine.generate(prompts, params)  # one continuous batch
        return [Summary(tokenizer.decode(r.output_ids, skip_special_tokens=True), len(r.output_ids))
                for r in results]
    return summarize


def hf_summarizer(tokenizer, args) -> Summarizer:
    """transformers' greedy generate on the HF model, one article at a time (summarize.py warns that
    its left-padded HF batches are not exact), the unassigned ids suppressed as our sampler does."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from dbrx_serve.shared.reference import torch_dtype

    from .run_engine import device_of

    device = device_of(args.device)
    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(args.hf_model_dir, dtype=torch_dtype(args.hf_dtype)).to(device)
    suppress = [i for i, banned in enumerate(tokenizer.unassigned_mask(model.config.vocab_size)) if banned]

    def summarize_one(record: dict) -> Summary:
        ids = prompt_ids(tokenizer, record["article"], args.max_input_length)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids], device=device), max_new_tokens=args.output_len, do_sample=False,
                                 eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id, suppress_tokens=suppress)
        new = out[0, len(ids):].tolist()
        new = new[:new.index(tokenizer.eos_id)] if tokenizer.eos_id in new else new
        return Summary(tokenizer.decode(new, skip_special_tokens=True), len(new))
    return lambda batch: [summarize_one(record) for record in batch]


def evaluate(name: str, summarize: Summarizer, batches: list[list[dict]]) -> Evaluation:
    """One warm-up batch (the first article) outside the timer, then every batch timed: prompt
    encoding, generation and decoding."""
    warm_up = batches[0][:1]
    print_generated(name, warm_up, summarize(warm_up))
    seconds, summaries = 0.0, []
    for batch in batches:
        started = time.perf_counter()
        summaries += summarize(batch)
        seconds += time.perf_counter() - started
    references = [record["highlights"] for batch in batches for record in batch]
    return Evaluation(name, seconds, sum(s.num_tokens for s in summaries),
                      rouge([s.text for s in summaries], references))


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """What summarize.py's `evaluate.load("rouge")` computes: rouge_score without stemming, each
    prediction against its reference, BootstrapAggregator's mid F-measure, times 100, numpy seed 0."""
    import numpy as np
    from rouge_score import rouge_scorer, scoring

    np.random.seed(0)  # the bootstrap resamples with numpy's global generator
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
    aggregator = scoring.BootstrapAggregator()
    for prediction, reference in zip(predictions, references):
        aggregator.add_scores(scorer.score(reference, prediction))
    return {key: value.mid.fmeasure * 100 for key, value in aggregator.aggregate().items()}


def print_generated(name: str, batch: list[dict], summaries: list[Summary]) -> None:
    print(RULE)
    print(f"{name} Generated : ")
    print(f" Input : {[record['article'] for record in batch]}")
    print(f"\n Reference : {[record['highlights'] for record in batch]}")
    print(f"\n Output : {[[s.text] for s in summaries]}")
    print(RULE, flush=True)


def print_evaluation(e: Evaluation) -> None:
    print(f"{e.name} (total latency: {e.seconds} sec)")
    print(f"{e.name} (total output tokens: {e.num_tokens})")
    print(f"{e.name} (tokens per second: {e.num_tokens / e.seconds})")
    print(f"{e.name} beam 0 result")
    for key, score in e.scores.items():
        print(f"  {key} : {score}")
