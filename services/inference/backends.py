"""Execution backends by name: which modules the model's layers become and
which paged cache attends for them, applied from outside the model.

- `torch`: the model as written (per-expert loop, dequantize-per-call weight-only
  GEMMs) over kv_cache.py's PagedKVCache: the plain path, the CPU's default.
- `triton`: kernels/ (fused MoE, weight-only GEMMs, paged attention with the
  rotary embedding and cache write fused), decode steps in CUDA graphs: the
  default on CUDA. It also runs on the CPU under TRITON_INTERPRET=1 (tests).
  Its GEMMs launch the engine's tuned configurations for this GPU
  (`build_config.kernel_tuning`, kernels/tuning.py) where it has them.
"""

from dataclasses import dataclass
from typing import Callable

import torch

from dbrx_serve.shared.config import DbrxConfig
from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.kv_scales import KVScales
from dbrx_serve.shared.model import DbrxModel, LocalShape

from .kv_cache import PagedKVCache
from .step_tensors import StepTensors


@dataclass(frozen=True)
class Backend:
    name: str
    swap: Callable[[DbrxModel], DbrxModel]  # retype modules (after the weight-only swap)
    make_cache: Callable[..., object]  # (cfg, shape, num_blocks, tokens_per_block, dtype, device, scales, tensors)
    graphs: bool  # decode steps capture into CUDA graphs (on CUDA devices)
    install_tuning: Callable[[dict, torch.device], None]  # the engine's kernel_tuning, for this device's GPU


def torch_cache(cfg: DbrxConfig, shape: LocalShape, num_blocks: int, tokens_per_block: int, dtype: torch.dtype,
                device, scales: KVScales | None, tensors: StepTensors) -> PagedKVCache:
    return PagedKVCache(len(shape.layers), num_blocks, tokens_per_block, shape.n_kv_heads, cfg.head_dim, dtype,
                        device, scales)


def triton_swap(model: DbrxModel) -> DbrxModel:
    from .kernels import swap_modules  # triton is imported only when this backend is used
    return swap_modules(model)


def triton_cache(*args):
    from .kernels.attention import TritonPagedCache
    return TritonPagedCache(*args)


def triton_install_tuning(tables: dict, device: torch.device) -> None:
    from .kernels.tuning import install
    install(tables, device)


BACKENDS = {
    "torch": Backend("torch", lambda model: model, torch_cache, graphs=False,
                     install_tuning=lambda tables, device: None),
    "triton": Backend("triton", triton_swap, triton_cache, graphs=True, install_tuning=triton_install_tuning),
}
DEFAULT_BACKEND = {"cuda": "triton", "cpu": "torch"}


def backend_for(name: str | None, device: torch.device) -> Backend:
    """The named backend, or the device's default."""
    name = name or DEFAULT_BACKEND.get(device.type, "torch")
    if name not in BACKENDS:
        raise InvalidInput(f"unknown engine backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]
