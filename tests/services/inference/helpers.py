"""Comparing greedy tokens under float32 arithmetic.

A step's rows are computed together (one flattened row of tokens), and BLAS
sums in a different order for a different number of rows, so logits of the
same sequence differ a little (measured on the tiny model: up to 4.2e-4
between batch compositions, 1.3e-3 against a whole-sequence forward).
Greedy tokens are then identical except where the two best logits are
closer than that (seen: a gap of 1e-4 in one prompt of three). `assert_same_greedy` accepts a
divergence only at such a near-tie, judged on the reference's own logits."""

import torch

TIE = 5e-3  # a top-2 gap below this is a tie float32 cannot resolve (noise measured: 1.3e-3)


@torch.inference_mode()
def last_logits(model, ids: list[int], banned: torch.Tensor) -> torch.Tensor:
    logits = model(torch.tensor([ids]), torch.arange(len(ids))[None])[0, -1]
    return logits.masked_fill(banned[:logits.shape[0]], float("-inf"))


def assert_same_greedy(got, want, prompt, model, banned) -> bool:
    """True when identical; else the first difference must be a near-tie of the reference. Returns
    whether they were identical (tests count the ties they met)."""
    got, want = list(got), list(want)
    if got == want:
        return True
    k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    assert k < min(len(got), len(want)), f"lengths differ: {len(got)} vs {len(want)}"
    logits = last_logits(model, prompt + want[:k], banned)
    gap = float((logits[want[k]] - logits[got[k]]).abs())
    assert gap < TIE, f"greedy tokens differ at step {k} ({got[k]} vs {want[k]}), reference gap {gap:.2e}"
    return False
