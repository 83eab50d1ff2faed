"""bench/decode.py's baseline: transformers' DbrxForCausalLM (the oracle of our
tests) on the same DBRX-width layers, decoding with its own KV cache."""

import statistics
import time

import torch

from dbrx_serve.shared.testing import TinySpec, hf_config


def transformers_model(layers: int, device: torch.device):
    from transformers import DbrxForCausalLM

    spec = TinySpec(d_model=6144, n_heads=48, kv_n_heads=8, n_layers=layers, ffn_hidden_size=10752,
                    moe_num_experts=16, moe_top_k=4, vocab_size=100352, max_seq_len=4096, init_std=0.02)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            return DbrxForCausalLM(hf_config(spec)).eval()
    finally:
        torch.set_default_dtype(default)


@torch.inference_mode()
def transformers_decode(model, batch: int, context: int, steps: int, device: torch.device) -> dict:
    """Median ms of one decode step at `batch` x `context` (the prompt's forward is not timed)."""
    ids = torch.randint(0, 500, (batch, context), device=device)
    out = model(ids, use_cache=True)
    cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    times = []
    for _ in range(steps + 2):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = model(token, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    ms = statistics.median(times[2:])
    return {"batch": batch, "context": context, "ms_per_step": round(ms, 3), "tokens_per_s": round(batch / ms * 1e3, 1)}


def transformers_baseline(layers: int, batches: list[int], context: int, steps: int, device) -> list[dict]:
    model = transformers_model(layers, device)
    try:
        return [transformers_decode(model, b, context, steps, device) for b in batches]
    finally:
        del model
        torch.cuda.empty_cache()
