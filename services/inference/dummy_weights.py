"""Dummy weights: an engine whose build_config says `"dummy_weights": true` has no rank files; each
rank makes its share of the model's tensors on its own device, of a plausible scale, as
trtllm-build does without a checkpoint. For speed measurements of models too large to convert
(bench/decode.py: the whole of DBRX on one or several GPUs), never for serving text.

Every rank seeds the same generator, so replicated tensors (the router, the norms) are the same on
every rank and tensor-parallel ranks route their tokens alike."""

import torch

from dbrx_serve.shared.model import DbrxModel
from dbrx_serve.shared.quantization import SCALE_SUFFIXES

SEED = 1234
WEIGHT_STD = 0.02


def dummy_tensor(name: str, like: torch.Tensor, dtype: torch.dtype, device, generator) -> torch.Tensor:
    """`like`'s shape, made in its checkpoint dtype on the device (`dtype`: the model's; the router is
    float32; int weights are made as int8, never through a float copy)."""
    if like.dtype == torch.int8:
        return torch.randint(-128, 128, like.shape, dtype=torch.int8, device=device, generator=generator)
    dtype = torch.float32 if name.endswith("router.weight") else dtype
    if name.endswith(SCALE_SUFFIXES):
        return torch.full(like.shape, WEIGHT_STD / 50, dtype=dtype, device=device)
    if "layernorm" in name or name.endswith("ln_f.weight"):
        return torch.ones(like.shape, dtype=dtype, device=device)
    return torch.randn(like.shape, dtype=dtype, device=device, generator=generator).mul_(WEIGHT_STD)


def dummy_state(model: DbrxModel, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """A state dict for `model` (on the meta device) made on `device`."""
    generator = torch.Generator(device=device).manual_seed(SEED)
    return {name: dummy_tensor(name, t, dtype, device, generator) for name, t in model.state_dict().items()}
