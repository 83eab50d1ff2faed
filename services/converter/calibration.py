"""INT8 KV-cache calibration (docs/trtllm-checkpoint.md, "INT8 KV cache").

Runs our reference forward pass (float32, the blocks of `DbrxModel`) over the
calibration text, a layer at a time over all samples (each sample its own
sequence, no padding), and records per layer:
- TensorRT-LLM's scalar: max |Wqkv output| over Q, K and V, before the clamp;
- ours: max |K| after the clamp and RoPE, max |V| after the clamp (what the
  cache stores), seen by the `attend` function each block calls.
Each divided by 127.
"""

from pathlib import Path
from typing import Callable

import torch

from dbrx_serve.shared.config import DbrxConfig
from dbrx_serve.shared.hf_checkpoint import HFCheckpoint
from dbrx_serve.shared.kv_scales import KVScales
from dbrx_serve.shared.mapping import Mapping
from dbrx_serve.shared.model import Block, LocalShape, causal_attention, rotary, run_blocks
from dbrx_serve.shared.sharding import rank_tensors

from .calibration_text import MAX_TOKENS, CalibrationSet


class KVRecorder:
    """Running maxima per layer: forward hooks on each block's qkv, and an `attend` wrapper."""

    def __init__(self, num_layers: int):
        self.qkv, self.k, self.v = [0.0] * num_layers, [0.0] * num_layers, [0.0] * num_layers

    def qkv_hook(self, layer: int):
        def hook(_module, _inputs, output):  # the Wqkv output, before the clamp
            self.qkv[layer] = max(self.qkv[layer], output.abs().max().item())
        return hook

    def attend(self, layer: int, q, k, v, positions):  # k after clamp and RoPE, v after clamp
        self.k[layer] = max(self.k[layer], k.abs().max().item())
        self.v[layer] = max(self.v[layer], v.abs().max().item())
        return causal_attention(layer, q, k, v, positions)

    def scales(self, calib: CalibrationSet) -> KVScales:
        """Our K and V scales, and TensorRT-LLM's factor per layer."""
        trtllm, k, v = (tuple(m / 127.0 for m in maxima) for maxima in (self.qkv, self.k, self.v))
        source = {"dataset": calib.dataset, "samples": len(calib.samples), "max_seq_len": MAX_TOKENS}
        return KVScales(k, v, source, trtllm)


def load_block(cfg: DbrxConfig, layer: int, group: dict[str, torch.Tensor]) -> Block:
    """One block of the single-rank model from its checkpoint tensors (no copy: assigned)."""
    with torch.device("meta"):
        block = Block(cfg, LocalShape.of(cfg), layer)
    prefix = f"transformer.layers.{layer}."
    block.load_state_dict({name.removeprefix(prefix): t for name, t in group.items()}, strict=True, assign=True)
    return block.eval()


@torch.inference_mode()
def calibrate(model_dir: str | Path, calib: CalibrationSet,
              on_layer: Callable[[int], None] = lambda i: None) -> KVScales:
    """Our reference forward pass, a layer at a time over every sample, so that only one
    layer's weights (and the samples' hidden states) are in memory; `on_layer(i)` after each."""
    with HFCheckpoint(model_dir) as ckpt:
        cfg = ckpt.config
        recorder = KVRecorder(cfg.n_layers)
        groups = rank_tensors(ckpt, Mapping(), 0, torch.float32)
        embedding = next(groups)["transformer.vocab_embedding.weight"]  # [V,H]
        hidden = [embedding[torch.tensor([sample])] for sample in calib.samples]  # [1,T,H] each
        del embedding
        for layer in range(cfg.n_layers):
            block = load_block(cfg, layer, next(groups))
            block.attention.qkv.register_forward_hook(recorder.qkv_hook(layer))
            hidden = [run_block(block, cfg, h, recorder.attend) for h in hidden]
            del block
            ckpt.close()  # unmap what was read
            on_layer(layer)
    return recorder.scales(calib)


def run_block(block: Block, cfg: DbrxConfig, x: torch.Tensor, attend) -> torch.Tensor:
    positions = torch.arange(x.shape[1])[None]  # [1,T]
    cos, sin = rotary(positions, cfg.head_dim, cfg.rope_theta, x.dtype)
    return run_blocks([block], x, cos, sin, positions, attend)
