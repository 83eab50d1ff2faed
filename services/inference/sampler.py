"""Next tokens from logits, per request: greedy, or temperature, top-k and
top-p sampling drawn from the request's own torch.Generator (same seed, same
tokens, whatever else is in the batch). Unassigned vocabulary ids are set to
-inf before anything else (docs/tokenizer.md section 1), so they are never
chosen. A logprob is log_softmax of those masked logits (before temperature,
top-k and top-p) at the chosen token."""

import torch

from .params import SamplingParams

NEG_INF = float("-inf")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p (at least one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    drop = probs.cumsum(-1) - probs >= p  # mass before this token already reaches p
    return logits.masked_fill(drop.scatter(0, order, drop), NEG_INF)


class Sampler:
    def __init__(self, banned: torch.Tensor | None = None):
        self.banned = banned  # bool [V]: True at unassigned ids

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B,V] float32 with the unassigned ids at -inf."""
        if self.banned is None:
            return logits
        return logits.masked_fill(self.banned[:logits.shape[-1]].to(logits.device), NEG_INF)

    def sample(self, logits: torch.Tensor, params: list[SamplingParams],
               generators: list[torch.Generator | None]) -> tuple[list[int], list[float | None]]:
        """logits [B,V] -> B tokens and, where asked, their logprobs."""
        logits = self.mask(logits.float())
        tokens = [self.choose(row, p, g) for row, p, g in zip(logits, params, generators)]
        logprobs = [self.logprob(row, t) if p.return_logprobs else None for row, p, t in zip(logits, params, tokens)]
        return tokens, logprobs

    @staticmethod
    def choose(row: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
        if params.greedy:
            return int(row.argmax())
        row = top_p_filter(top_k_filter(row / params.temperature, params.top_k), params.top_p)
        probs = torch.softmax(row, dim=-1)
        return int(torch.multinomial(probs, 1, generator=generator))

    @staticmethod
    def logprob(row: torch.Tensor, token: int) -> float:
        return float(torch.log_softmax(row, dim=-1)[token])
