"""The inference engine's plain Python API, which the gRPC service wraps thinly.

    engine = Engine.from_dir("engines/tiny", device="cpu")
    results = engine.generate(["What is AGI?"], SamplingParams(max_new_tokens=32, temperature=0))

A multi-rank engine runs on rank 0 of an MPI world of as many ranks (executor.py): the
scheduler and sampler here are the same.

or step by step: `add_request` / `abort` / `step()` (continuous batching:
requests added between steps join the running batch), `expire()` (requests
past their deadline), and `stats()`. async_engine.py streams step outputs to
asyncio callers.

Looking ahead (one-rank engines on a GPU): while a decoding batch goes on
unchanged, `step()` launches the next step, its input ids the tokens this one
sampled, still on the device, before it reads them; the host's work between
two steps (reading, stop checks, the next plan) then runs while the GPU works.
A sequence that stops meanwhile has computed one token for nothing, dropped.
"""

import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Iterator

import torch

from dbrx_serve.shared.errors import InvalidInput

from .block_manager import BlockManager
from .engine_dir import EngineDir, load_engine_dir
from .limits import EngineLimits
from .executor import open_executor
from .outputs import EngineStats, Result, StepOutput
from .params import SamplingParams
from .plan import StepPlan
from .prompt import Prompt, PromptEncoder
from .sampler import Draws, Sampler, SamplingRows
from .scheduler import Chunk, Scheduler
from .sequence import PENDING, Sequence
from .stop import FinishReason, StopChecker


log = logging.getLogger("dbrx_serve.inference")
GB = 1e9
WARM_UP = SamplingParams(max_new_tokens=1, temperature=0)


def load_tokenizer_of(engine: EngineDir):
    from dbrx_serve.services.tokenizer.tokenizer import load_tokenizer
    return load_tokenizer(engine.tokenizer_dir) if engine.tokenizer_dir else None


@dataclass(frozen=True)
class Launched:
    """A step running on the device: the sequences it samples for, their draws not yet read."""

    seqs: list[Sequence]
    draws: Draws


class Engine:
    def __init__(self, engine: EngineDir, limits: EngineLimits, device: str | torch.device = "cpu",
                 backend: str | None = None, model=None, verify: tuple[bool, bool] = (True, False),
                 lookahead: bool | None = None):
        """`backend`: backends.py's name (None: the device's default); `model`: weights already on the
        device (benchmarks), else the engine's rank file; `verify`: how the other ranks of a
        multi-rank engine check the directory (quick check, every sha256); `lookahead` (the module's
        docstring): None on CUDA devices only, where the host and the GPU overlap; one-rank engines."""
        self.engine_dir, self.limits = engine, limits
        self.tokenizer = load_tokenizer_of(engine)
        self.vocab_size = engine.config.vocab_size
        banned = self.tokenizer.unassigned_mask(self.vocab_size) if self.tokenizer else None
        self.sampler = Sampler(torch.tensor(banned, device=device) if banned is not None else None)
        self.executor = open_executor(engine, limits, torch.device(device), backend, model, verify,
                                      self.sampler.sample_costliest)
        self.runner = self.executor.runner  # this process's rank (rank 0 of a multi-rank engine)
        self.blocks = BlockManager(self.runner.memory.num_blocks, limits.tokens_per_block)
        self.scheduler = Scheduler(limits, self.blocks)
        self.sequences: dict[str, Sequence] = {}
        on_gpu = self.runner.device.type == "cuda"
        self.lookahead = (on_gpu if lookahead is None else lookahead) and self.executor.feeds_tokens
        self.ahead: Launched | None = None  # the step launched ahead, not yet read

    @classmethod
    def from_dir(cls, engine_dir: str | Path, device: str | torch.device = "cpu", verify: bool = True,
                 verify_checksums: bool = False, tokenizer_dir: str | Path | None = None,
                 backend: str | None = None, lookahead: bool | None = None, **runtime_limits) -> "Engine":
        """Load an engine directory, checked quickly against its manifest (every byte hashed with
        `verify_checksums`); `tokenizer_dir` replaces its tokenizer/; `backend`: backends.py's name
        (None: the device's default); `lookahead`: __init__'s; `runtime_limits`: limits.py's RUNTIME_LIMITS."""
        started = time.perf_counter()
        engine = load_engine_dir(engine_dir, verify, verify_checksums, tokenizer_dir)
        checked = time.perf_counter()
        loaded = cls(engine, EngineLimits.from_build_config(engine.build, **runtime_limits), device, backend,
                     verify=(verify, verify_checksums), lookahead=lookahead)
        log_load_time(loaded, checked - started, time.perf_counter() - checked, verify_checksums)
        return loaded

    # --- requests ---

    def add_request(self, prompt: Prompt, params: SamplingParams = SamplingParams(),
                    request_id: str | None = None, deadline: float | None = None) -> str:
        """Queue a request (text, token ids or a `Chat`); `deadline` is a time.monotonic() value
        after which `expire()` ends it, before its prefill if it is still waiting."""
        request_id = request_id or uuid.uuid4().hex
        if request_id in self.sequences:
            raise InvalidInput(f"request id {request_id!r} is already in use")
        seq = Sequence(request_id, self.prompts.ids(prompt), params, self.stop_checker(params),
                       seed_of(params), deadline=deadline)
        self.scheduler.add(seq)
        self.sequences[request_id] = seq
        return request_id

    @property
    def has_tokenizer(self) -> bool:
        return self.tokenizer is not None

    def stream(self, prompt: Prompt, params: SamplingParams = SamplingParams()) -> Iterator[StepOutput]:
        """One request's outputs as the engine steps it, for a caller that drives the engine alone
        (`dbrx run --streaming`; other requests' outputs are not kept); leaving early aborts it."""
        request_id = self.add_request(prompt, params)
        try:
            while request_id in self.sequences:
                yield from (output for output in self.step() if output.request_id == request_id)
        finally:
            self.abort(request_id)

    @cached_property
    def prompts(self) -> PromptEncoder:
        return PromptEncoder(self.tokenizer, self.vocab_size, self.limits.max_input_len)

    def stop_checker(self, params: SamplingParams) -> StopChecker:
        if params.stop and self.tokenizer is None:
            raise InvalidInput("stop strings need the engine's tokenizer/, which this engine lacks")
        end_ids = params.end_id if params.end_id is not None else (self.tokenizer.stop_ids if self.tokenizer else ())
        detok = self.tokenizer.detokenizer(params.skip_special_tokens) if self.tokenizer else None
        return StopChecker(tuple(end_ids), params.max_new_tokens, params.stop, detok)

    def abort(self, request_id: str) -> bool:
        """Cancel a request; its KV blocks go back to the pool at once. False if unknown or done."""
        seq = self.sequences.get(request_id)
        if seq is None:
            return False
        self.end(seq, FinishReason.CANCELLED)
        return True

    def expire(self, now: float | None = None) -> list[StepOutput]:
        """End every request whose deadline has passed (a waiting one never reaches its prefill);
        their blocks go back to the pool at once. Call it before each step."""
        now = time.monotonic() if now is None else now
        return [self.end(seq, FinishReason.DEADLINE) for seq in self.scheduler.expired(now)]

    def end(self, seq: Sequence, reason: FinishReason) -> StepOutput:
        self.scheduler.finish(seq, reason)
        self.sequences.pop(seq.request_id, None)
        return StepOutput(seq.request_id, (), "", (), reason)

    def warm_up(self) -> None:
        """Run one real step (a one-token request, gone afterwards), so that the first client
        does not pay for the first forward pass's one-off costs."""
        request_id = self.add_request([0], WARM_UP, f"warm-up-{uuid.uuid4().hex}")
        while request_id in self.sequences:
            self.step()

    # --- stepping ---

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    def step(self) -> list[StepOutput]:
        """Run one scheduled batch; an output for each sequence that sampled a token (looking ahead,
        the step launched by the call before, the next one launched first)."""
        launched, self.ahead = self.ahead, None
        if launched is None:
            chunks = self.scheduler.schedule()
            if not chunks:
                return []
            launched = self.launch(chunks)
        if self.lookahead:
            chunks = self.scheduler.schedule_ahead(launched.seqs)
            self.ahead = self.launch(chunks, feed=launched.draws.tokens) if chunks else None
        return self.read(launched)

    def launch(self, chunks: list[Chunk], feed: torch.Tensor | None = None) -> Launched:
        """Run the chunks and start sampling (not waited for); `feed`: the input ids on the device
        (ModelRunner.run's)."""
        logits = self.executor.run(StepPlan.of(chunks, self.limits.tokens_per_block), feed)  # [S,V]
        self.scheduler.advance(chunks)
        seqs = [c.seq for c in chunks if c.samples]
        rows = SamplingRows(tuple(s.params for s in seqs), tuple(s.seed for s in seqs),
                            tuple(len(s.output_ids) for s in seqs))
        return Launched(seqs, self.sampler.draw_async(logits, rows))

    def read(self, launched: Launched) -> list[StepOutput]:
        """A launched step's tokens (waiting for them), recorded in place of their PENDING stand-ins;
        sequences that ended while it ran (stopped a step earlier, aborted, expired) take none."""
        tokens, logprobs = launched.draws.result()
        outputs = []
        for seq, token, logprob in zip(launched.seqs, tokens, logprobs):
            if seq.is_finished:
                continue
            if seq.output_ids and seq.output_ids[-1] == PENDING:
                seq.output_ids.pop()
            outputs.append(self.append(seq, token, logprob))
        return outputs

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
                           kv_blocks_used=blocks.used, kv_blocks_free=blocks.free, kv_blocks_total=blocks.total,
                           num_admitted=self.scheduler.num_admitted, num_expired=self.scheduler.num_expired)


def log_load_time(engine: Engine, check_seconds: float, load_seconds: float, checksums: bool) -> None:
    size = engine.engine_dir.weight_bytes / GB
    log.info("engine %s: checked against its manifest (%s) in %.2f s; %.2f GB of weights loaded onto %s "
             "in %.2f s (%.2f GB/s)", engine.engine_dir.path, "every sha256" if checksums else "sizes and headers",
             check_seconds, size, engine.runner.device, load_seconds, size / max(load_seconds, 1e-9))


def seed_of(params: SamplingParams) -> int:
    """The request's seed, or a fresh one: sampled tokens depend on it alone (sampler.py)."""
    return params.seed if params.seed is not None else secrets.randbits(63)


def result_of(seq: Sequence) -> Result:
    return Result(seq.request_id, tuple(seq.prompt_ids), tuple(seq.output_ids), seq.text, seq.finish_reason,
                  tuple(seq.logprobs))
