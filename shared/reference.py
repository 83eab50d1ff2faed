"""The reference path: a HF DBRX checkpoint straight into `DbrxModel`, greedy
decoding with a dense KV cache. `dbrx run --hf_model_dir` and KV-cache
calibration use it; later comparisons take it as ground truth."""

from pathlib import Path
from typing import Iterable, Iterator

import torch

from .errors import InvalidInput
from .hf_checkpoint import HFCheckpoint
from .mapping import Mapping
from .model import DbrxModel, DenseKVCache
from .sharding import rank_tensors

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in TORCH_DTYPES:
        raise InvalidInput(f"unknown dtype {name!r}: choose one of {', '.join(TORCH_DTYPES)}")
    return TORCH_DTYPES[name]


def load_hf_model(model_dir: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> DbrxModel:
    """Read the HF checkpoint tensor by tensor into a single-rank model."""
    with HFCheckpoint(model_dir) as ckpt:
        with torch.device("meta"):
            model = DbrxModel(ckpt.config)
        state = {}
        for group in rank_tensors(ckpt, Mapping(), 0, dtype):
            state.update({name: t.to(device, copy=True) for name, t in group.items()})  # off the mmap
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def greedy_generate(model: DbrxModel, prompt: list[int], max_new_tokens: int,
                    end_ids: Iterable[int] = (), banned: torch.Tensor | None = None) -> list[int]:
    """Greedy continuation of one prompt; stops after an end id (which is returned too)."""
    return list(greedy_tokens(model, prompt, max_new_tokens, end_ids, banned))


@torch.inference_mode()
def greedy_tokens(model: DbrxModel, prompt: list[int], max_new_tokens: int,
                  end_ids: Iterable[int] = (), banned: torch.Tensor | None = None) -> Iterator[int]:
    """Yield greedy tokens one at a time. `banned` is a bool mask over the vocabulary
    (unassigned ids), set to -inf before argmax."""
    if not prompt:
        raise InvalidInput("the prompt is empty: give at least one token")
    end_ids = set(end_ids)
    device = next(model.parameters()).device
    cache = DenseKVCache(model, 1, len(prompt) + max_new_tokens)
    tokens = torch.tensor([prompt], device=device)
    positions = torch.arange(len(prompt), device=device)[None]
    for _ in range(max_new_tokens):
        logits = model(tokens, positions, cache.attend)[0, -1]  # [V]
        if banned is not None:
            logits = logits.masked_fill(banned[:logits.shape[0]].to(device), float("-inf"))
        token = int(logits.argmax())
        yield token
        if token in end_ids:
            return
        tokens = torch.tensor([[token]], device=device)
        positions = positions[:, -1:] + 1
