"""Next tokens for a whole batch at once, on the logits' device: greedy, or
temperature, top-k and top-p sampling, with one host transfer per step.

Unassigned vocabulary ids are set to -inf before anything else
(docs/tokenizer.md section 1), so they are never chosen. A logprob is
log_softmax of those masked logits (before temperature, top-k and top-p) at the
chosen token.

Sampling is the Gumbel-max trick: argmax(logits / T + g) over the ids top-k and
top-p keep, g = -log(-log(u)), which draws exactly from softmax(logits / T) on
those ids. The uniforms u come from a counter-based hash of (request seed, the
request's output position, vocabulary id), not from a generator's state, so a
request's tokens depend on its seed alone: not on the batch around it, the
device, or how many ranks share the model.
"""

from dataclasses import dataclass

import torch

from .params import SamplingParams

NEG_INF = float("-inf")
MASK32 = 0xFFFFFFFF
COSTLIEST = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, return_logprobs=True)  # every filter, logprobs


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """One row: keep the k largest logits (k <= 0 keeps all)."""
    return keep_top_k(logits[None], torch.tensor([k], device=logits.device))[0]


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """One row: keep the smallest set of most likely tokens whose probability reaches p (at least one)."""
    return keep_top_p(logits[None], torch.tensor([p], device=logits.device))[0]


def keep_top_k(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """logits [B,V], k [B] (0: all) -> logits with all but each row's k largest at -inf."""
    sorted_logits = logits.sort(dim=-1, descending=True).values
    k = torch.where((k <= 0) | (k > logits.shape[-1]), logits.shape[-1], k)
    kth = sorted_logits.gather(-1, (k - 1).long()[:, None])  # [B,1]
    return logits.masked_fill(logits < kth, NEG_INF)


def keep_top_p(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """logits [B,V], p [B] in (0, 1] -> logits with the tail beyond each row's nucleus at -inf."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    drop = (probs.cumsum(-1) - probs >= p[:, None]) & (p[:, None] < 1)  # mass before a token already reaches p
    return logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)


def fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's finalizer on int64 tensors holding 32-bit values (the same bits on any device)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & MASK32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & MASK32
    return h ^ (h >> 16)


def uniforms(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """seeds (a uint64's bits), steps [B] int64 -> [B,V] float32 uniforms in (0, 1), a function of
    (seed, step, id) alone."""
    row = fmix32((seeds & MASK32) ^ fmix32(((seeds >> 32) & MASK32) ^ fmix32(steps & MASK32)))  # [B]
    ids = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    bits = fmix32(row[:, None] ^ fmix32(ids)[None, :]) >> 8  # [B,V], 24 random bits
    return (bits.float() + 0.5) / float(1 << 24)


@dataclass(frozen=True)
class SamplingRows:
    """The sampling parameters of a step's rows, as the sampler needs them."""

    params: tuple[SamplingParams, ...]
    seeds: tuple[int, ...]  # per request, fixed when it was added
    steps: tuple[int, ...]  # tokens the request has produced so far

    @property
    def all_greedy(self) -> bool:
        return all(p.greedy for p in self.params)

    def tensors(self, device) -> tuple[torch.Tensor, ...]:
        """temperature, top_k, top_p, greedy, seeds, steps as [B] tensors on `device`."""
        floats = torch.tensor([[p.temperature if not p.greedy else 1.0 for p in self.params],
                               [p.top_k for p in self.params], [p.top_p for p in self.params],
                               [float(p.greedy) for p in self.params]], dtype=torch.float32)
        seeds = [s - (1 << 64) if s >= 1 << 63 else s for s in self.seeds]  # a uint64's bits in an int64
        ints = torch.tensor([seeds, self.steps], dtype=torch.int64)
        floats, ints = floats.to(device, non_blocking=True), ints.to(device, non_blocking=True)
        return floats[0], floats[1].long(), floats[2], floats[3].bool(), ints[0], ints[1]


@dataclass(frozen=True)
class Draws:
    """A step's sampled tokens: `tokens` [B] on the logits' device (what the next step may read as its
    input ids), and their host copy (with the logprobs asked for), ready once `result()` returns."""

    tokens: torch.Tensor
    host: torch.Tensor  # [1 or 2, B] float32: the ids, then the logprobs where any row asked
    copied: torch.cuda.Event | None  # recorded after the device-to-host copy (None on the CPU)
    wanted: tuple[bool, ...]  # return_logprobs of each row

    def result(self) -> tuple[list[int], list[float | None]]:
        if self.copied is not None:
            self.copied.synchronize()
        logprobs = self.host[1].tolist() if self.host.shape[0] > 1 else [None] * len(self.wanted)
        return ([int(t) for t in self.host[0].tolist()],
                [float(lp) if want else None for lp, want in zip(logprobs, self.wanted)])


class Sampler:
    def __init__(self, banned: torch.Tensor | None = None):
        self.banned = banned  # bool [V]: True at unassigned ids

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B,V] float32 with the unassigned ids at -inf."""
        if self.banned is None:
            return logits
        return logits.masked_fill(self.banned[:logits.shape[-1]].to(logits.device), NEG_INF)

    def sample(self, logits: torch.Tensor, rows: SamplingRows) -> tuple[list[int], list[float | None]]:
        """logits [B,V] -> B tokens and, where asked, their logprobs (one device-to-host copy)."""
        return self.draw_async(logits, rows).result()

    def draw_async(self, logits: torch.Tensor, rows: SamplingRows) -> Draws:
        """The draws of logits [B,V] on their device, their copy to the host started, not waited for."""
        logits = self.mask(logits.float())
        tokens = logits.argmax(-1) if rows.all_greedy else self.draw(logits, rows)
        wanted = tuple(p.return_logprobs for p in rows.params)
        values = tokens.float()[None]  # ids < 2^24 are exact in float32
        if any(wanted):
            logprobs = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None])[:, 0]
            values = torch.stack([tokens.float(), logprobs])
        host = torch.empty(values.shape, dtype=torch.float32, pin_memory=values.is_cuda)
        host.copy_(values, non_blocking=True)
        copied = torch.cuda.Event() if values.is_cuda else None
        if copied is not None:
            copied.record()
        return Draws(tokens, host, copied, wanted)

    @staticmethod
    def draw(logits: torch.Tensor, rows: SamplingRows) -> torch.Tensor:
        """Greedy rows take the argmax; the others a Gumbel-max draw over what top-k and top-p keep."""
        temperature, top_k, top_p, greedy, seeds, steps = rows.tensors(logits.device)
        scaled = logits / temperature[:, None]
        if any(p.top_k > 0 for p in rows.params):
            scaled = keep_top_k(scaled, top_k)
        if any(p.top_p < 1 for p in rows.params):
            scaled = keep_top_p(scaled, top_p)
        gumbel = -torch.log(-torch.log(uniforms(seeds, steps, logits.shape[-1])))
        return torch.where(greedy, logits.argmax(-1), (scaled + gumbel).argmax(-1))

    def sample_costliest(self, logits: torch.Tensor) -> None:
        """Every row of logits [B,V] sampled as the costliest request asks (what the memory plan's
        profiling pass measures: memory.py)."""
        num_rows = logits.shape[0]
        self.sample(logits, SamplingRows((COSTLIEST,) * num_rows, (0,) * num_rows, (0,) * num_rows))
