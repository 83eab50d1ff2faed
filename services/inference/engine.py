"""The inference engine's plain Python API, which the gRPC service wraps thinly.

    engine = Engine.from_dir("engines/tiny", device="cpu")
    results = engine.generate(["What is AGI?"], SamplingParams(max_new_tokens=32, temperature=0))

or step by step: `add_request` / `abort` / `step()` (continuous batching:
requests added between steps join the running batch), and `stats()`.
async_engine.py streams step outputs to asyncio callers.
"""

import secrets
import uuid
from pathlib import Path
from typing import Iterable

import torch

from dbrx_serve.shared.errors import InvalidInput

from .block_manager import BlockManager
from .engine_dir import EngineDir, load_engine_dir
from .limits import EngineLimits
from .model_runner import ModelRunner
from .outputs import EngineStats, Result, StepOutput
from .params import SamplingParams
from .plan import StepPlan
from .sampler import Sampler, SamplingRows
from .scheduler import Scheduler
from .sequence import Sequence
from .stop import FinishReason, StopChecker


def load_tokenizer_of(engine: EngineDir):
    from dbrx_serve.services.tokenizer.tokenizer import load_tokenizer
    return load_tokenizer(engine.tokenizer_dir) if engine.tokenizer_dir else None


class Engine:
    def __init__(self, engine: EngineDir, limits: EngineLimits, device: str | torch.device = "cpu",
                 backend: str | None = None, model=None):
        """`backend`: backends.py's name (None: the device's default); `model`: weights already on the
        device (benchmarks), else the engine's rank file."""
        self.engine_dir, self.limits = engine, limits
        self.runner = ModelRunner(engine, limits, device, backend, model)
        self.blocks = BlockManager(self.runner.num_blocks, limits.tokens_per_block)
        self.scheduler = Scheduler(limits, self.blocks)
        self.tokenizer = load_tokenizer_of(engine)
        self.vocab_size = engine.config.vocab_size
        banned = self.tokenizer.unassigned_mask(self.vocab_size) if self.tokenizer else None
        self.sampler = Sampler(torch.tensor(banned, device=self.runner.device) if banned is not None else None)
        self.sequences: dict[str, Sequence] = {}

    @classmethod
    def from_dir(cls, engine_dir: str | Path, device: str | torch.device = "cpu", verify: bool = True,
                 backend: str | None = None, **runtime_limits) -> "Engine":
        """Load an engine directory; `runtime_limits`: limits.py's RUNTIME_LIMITS."""
        engine = load_engine_dir(engine_dir, verify)
        return cls(engine, EngineLimits.from_build_config(engine.build, **runtime_limits), device, backend)

    # --- requests ---

    def add_request(self, prompt: str | list[int], params: SamplingParams = SamplingParams(),
                    request_id: str | None = None) -> str:
        request_id = request_id or uuid.uuid4().hex
        if request_id in self.sequences:
            raise InvalidInput(f"request id {request_id!r} is already in use")
        seq = Sequence(request_id, self.prompt_ids(prompt), params, self.stop_checker(params),
                       seed_of(params))
        self.scheduler.add(seq)
        self.sequences[request_id] = seq
        return request_id

    def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidInput("this engine has no tokenizer/: give token ids, not text")
            prompt = self.tokenizer.encode_text(prompt)
        ids = list(prompt)
        if not ids:
            raise InvalidInput("the prompt is empty: give at least one token")
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.vocab_size]
        if bad:
            raise InvalidInput(f"prompt id {bad[0]!r} is outside the vocabulary 0..{self.vocab_size - 1}")
        return ids

    def stop_checker(self, params: SamplingParams) -> StopChecker:
        if params.stop and self.tokenizer is None:
            raise InvalidInput("stop strings need the engine's tokenizer/, which this engine lacks")
        end_ids = params.end_id if params.end_id is not None else (self.tokenizer.stop_ids if self.tokenizer else ())
        detok = self.tokenizer.detokenizer(params.skip_special_tokens) if self.tokenizer else None
        return StopChecker(tuple(end_ids), params.max_new_tokens, params.stop, detok)

    def abort(self, request_id: str) -> bool:
        """Cancel a request; its KV blocks go back to the pool at once. False if unknown or done."""
        seq = self.sequences.pop(request_id, None)
        if seq is None:
            return False
        self.scheduler.finish(seq, FinishReason.CANCELLED)
        return True

    # --- stepping ---

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    def step(self) -> list[StepOutput]:
        """Run one scheduled batch; an output for each sequence that sampled a token."""
        chunks = self.scheduler.schedule()
        if not chunks:
            return []
        logits = self.runner.run(StepPlan.of(chunks, self.limits.tokens_per_block))  # [S,V], rows that sample
        self.scheduler.advance(chunks)
        seqs = [c.seq for c in chunks if c.samples]
        rows = SamplingRows(tuple(s.params for s in seqs), tuple(s.seed for s in seqs),
                            tuple(len(s.output_ids) for s in seqs))
        tokens, logprobs = self.sampler.sample(logits, rows)
        return [self.append(seq, t, lp) for seq, t, lp in zip(seqs, tokens, logprobs)]

    def append(self, seq: Sequence, token: int, logprob: float | None) -> StepOutput:
        """Record a sampled token (an end id that finishes is not kept); finish the sequence when done."""
        delta, reason = seq.stop.push(token)
        kept = () if reason is FinishReason.END_ID else (token,)
        logprobs = (logprob,) if kept and logprob is not None else ()
        seq.output_ids.extend(kept)
        seq.logprobs.extend(logprobs)
        if reason is not None:
            self.scheduler.finish(seq, reason)
            self.sequences.pop(seq.request_id, None)
        return StepOutput(seq.request_id, kept, delta, logprobs, reason)

    # --- whole requests ---

    def generate(self, prompts: Iterable[str | list[int]],
                 params: SamplingParams | list[SamplingParams] = SamplingParams()) -> list[Result]:
        """Run prompts to completion together (continuous batching); results in prompt order."""
        prompts = list(prompts)
        params = params if isinstance(params, list) else [params] * len(prompts)
        if len(params) != len(prompts):
            raise InvalidInput(f"{len(prompts)} prompts but {len(params)} sampling params")
        ids = self.add_all(prompts, params)
        seqs = [self.sequences[i] for i in ids]
        while not all(s.is_finished for s in seqs):
            self.step()
        return [result_of(s) for s in seqs]

    def add_all(self, prompts: list, params: list[SamplingParams]) -> list[str]:
        """Add every request, or none: a refused one withdraws those added before it."""
        added = []
        try:
            for prompt, p in zip(prompts, params):
                added.append(self.add_request(prompt, p))
        except BaseException:
            for request_id in added:
                self.abort(request_id)
            raise
        return added

    def stats(self) -> EngineStats:
        blocks = self.blocks.stats()
        return EngineStats(running=len(self.scheduler.running), waiting=len(self.scheduler.waiting),
                           kv_blocks_used=blocks.used, kv_blocks_free=blocks.free, kv_blocks_total=blocks.total)


def seed_of(params: SamplingParams) -> int:
    """The request's seed, or a fresh one: sampled tokens depend on it alone (sampler.py)."""
    return params.seed if params.seed is not None else secrets.randbits(63)


def result_of(seq: Sequence) -> Result:
    return Result(seq.request_id, tuple(seq.prompt_ids), tuple(seq.output_ids), seq.text, seq.finish_reason,
                  tuple(seq.logprobs))
