"""Triton kernels for the engine on CUDA GPUs (and in Triton's interpreter on
the CPU, for tests): the GEMM of every linear layer and expert (gemm.py), the
fused mixture of experts (moe.py), attention over the paged cache with the
rotary embedding and cache write fused (attention.py), LayerNorm and the residual
sum with its LayerNorm (norm.py) and the sums of K-split partials (splits.py).
On GPUs of compute capability 9.0 and up each launches with programmatic
dependent launch (device.py).

`swap_modules` puts them into a model from outside, as new classes of the same
modules: parameters, names and state dicts stay the model's.
"""

from torch import nn

from dbrx_serve.shared.model import DbrxModel
from dbrx_serve.shared.weight_only import WeightOnlyLinear

from .attention import TritonAttention
from .gemm import CublasLinear, TritonWeightOnlyLinear
from .moe import FusedMoE
from .norm import TritonLayerNorm, TritonResidualLayerNorm


def swap_modules(model: DbrxModel) -> DbrxModel:
    """Retype each block's attention, experts, LayerNorms and projections (weight-only ones run our GEMM,
    float ones stay torch's: cuBLAS). Call after the weight-only swap, before or after loading weights."""
    for block in model.transformer.layers:
        block.attention.__class__ = TritonAttention
        block.mlp.__class__ = FusedMoE
        block.input_layernorm.__class__ = TritonResidualLayerNorm
        block.post_layernorm.__class__ = TritonResidualLayerNorm
        for linear in (block.attention.qkv, block.attention.dense):
            if type(linear) is WeightOnlyLinear:
                linear.__class__ = TritonWeightOnlyLinear
            elif type(linear) is nn.Linear:
                linear.__class__ = CublasLinear
    if hasattr(model.transformer, "ln_f"):
        model.transformer.ln_f.__class__ = TritonLayerNorm
    return model
