"""What bench/decode.py measures on: DBRX-width engines with random weights made
on the device, the bytes a step must read, and the copy bandwidth."""

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dbrx_serve.services.inference.backends import backend_for
from dbrx_serve.services.inference.engine import Engine
from dbrx_serve.services.inference.engine_dir import EngineDir
from dbrx_serve.services.inference.limits import EngineLimits
from dbrx_serve.services.inference.model_runner import empty_model
from dbrx_serve.shared.config import DbrxConfig
from dbrx_serve.shared.quantization import SCHEMES
from dbrx_serve.shared.reference import torch_dtype

BASE_SEED = 1234
FULL = dict(vocab_size=100352, d_model=6144, n_heads=48, kv_n_heads=8, ffn_hidden_size=10752, moe_num_experts=16,
            moe_top_k=4, max_seq_len=32768, rope_theta=500000.0, clip_qkv=8.0)
SMOKE = dict(vocab_size=512, d_model=64, n_heads=4, kv_n_heads=2, ffn_hidden_size=32, moe_num_experts=4,
             moe_top_k=2, max_seq_len=256, rope_theta=500000.0, clip_qkv=8.0)
TOKENS_PER_BLOCK = 32
WEIGHT_STD = 0.02


@dataclass(frozen=True)
class ModelSpec:
    width: dict
    layers: int
    precision: str  # bf16, int8, int4

    def config(self, dtype: str) -> DbrxConfig:
        return DbrxConfig(n_layers=self.layers, torch_dtype=dtype, **self.width)


def engine_stub(cfg: DbrxConfig, precision: str, limits: EngineLimits) -> EngineDir:
    """An engine directory's description with no files: the weights come from `random_state`."""
    quant = {"quant_algo": SCHEMES[precision].quant_algo} if precision in SCHEMES else {}
    return EngineDir(Path("random-weights"), cfg, {"quantization": quant, "mapping": {"world_size": 1}},
                     {name: getattr(limits, name) for name in ("max_batch_size", "max_seq_len")}, None)


def random_tensor(name: str, like: torch.Tensor, dtype: torch.dtype, device, generator) -> torch.Tensor:
    """Weights of a plausible scale, made in their checkpoint dtype on the device (`dtype`: the model's;
    the router is float32; int weights are made as int8, never through a float copy)."""
    if like.dtype == torch.int8:
        return torch.randint(-128, 128, like.shape, dtype=torch.int8, device=device, generator=generator)
    dtype = torch.float32 if name.endswith("router.weight") else dtype
    if name.endswith("per_channel_scale"):
        return torch.full(like.shape, WEIGHT_STD / 50, dtype=dtype, device=device)
    if "layernorm" in name or name.endswith("ln_f.weight"):
        return torch.ones(like.shape, dtype=dtype, device=device)
    return torch.randn(like.shape, dtype=dtype, device=device, generator=generator).mul_(WEIGHT_STD)


def bench_limits(runs: list[tuple[int, int]], new_tokens: int, prefill: int, graphs: bool) -> EngineLimits:
    """Limits for decode runs of (batch, context) and one prompt of `prefill` tokens; the KV pool holds
    the largest run (the int8 model leaves little room)."""
    blocks = max(b * -(-(c + new_tokens) // TOKENS_PER_BLOCK) for b, c in runs) if runs else 0
    max_batch = max([b for b, _ in runs] + [1])
    max_len = max([c + new_tokens for _, c in runs] + [prefill + 16])
    return EngineLimits(max_batch_size=max_batch, max_input_len=max_len, max_seq_len=max_len,
                        max_num_tokens=max(prefill, max_batch, 256), tokens_per_block=TOKENS_PER_BLOCK,
                        max_graph_batch_size=max_batch if graphs else 0,
                        num_kv_blocks=max(blocks, -(-(prefill + 16) // TOKENS_PER_BLOCK)) + 8)


def make_engine(spec: ModelSpec, device: torch.device, backend: str | None, limits: EngineLimits) -> Engine:
    cfg = spec.config("float32" if device.type == "cpu" else "bfloat16")
    stub = engine_stub(cfg, spec.precision, limits)
    model = empty_model(stub, backend_for(backend, device))
    generator = torch.Generator(device=device).manual_seed(BASE_SEED)
    dtype = torch_dtype(cfg.torch_dtype)
    state = {name: random_tensor(name, t, dtype, device, generator) for name, t in model.state_dict().items()}
    model.load_state_dict(state, strict=True, assign=True)
    del state
    engine = Engine(stub, limits, device, backend, model.eval())
    if device.type == "cuda":
        engine.runner.cache.k.normal_()  # random KV: attention is not timed on zeros
        engine.runner.cache.v.normal_()
    return engine


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def bytes_per_step(engine: Engine, spec: ModelSpec, batch: int, context: int, active: list[int]) -> int:
    """Bytes a decode step must read: per layer the attention weights, router and norms, the experts
    the routing took; the LM head and final norm; the embedding rows; the KV cache (read, and one
    token written per sequence and layer)."""
    model = engine.runner.model
    total = module_bytes(model.lm_head) + module_bytes(model.transformer.ln_f)
    total += batch * model.cfg.d_model * model.transformer.vocab_embedding.weight.element_size()
    for block, experts in zip(model.transformer.layers, active):
        mlp = block.mlp
        per_expert = (module_bytes(mlp.fc) + module_bytes(mlp.proj)) // mlp.fc.weight.shape[0]
        total += module_bytes(block.attention) + module_bytes(mlp.router) + experts * per_expert
        total += module_bytes(block.input_layernorm) + module_bytes(block.post_layernorm)
    cache = engine.runner.cache
    kv_token = 2 * cache.k.shape[-2] * cache.k.shape[-1] * cache.k.element_size()  # K and V, one layer
    return total + len(active) * batch * (context + 1) * kv_token


def record_routing(engine: Engine) -> list[int]:
    """Distinct experts each layer's routing took in one untimed eager step of the current batch."""
    model = engine.runner.model
    everything = [model.cfg.moe_num_experts] * len(model.transformer.layers)
    if engine.runner.backend.name != "triton":
        return everything  # the plain path's loop is not hooked: count every expert
    from dbrx_serve.services.inference.kernels import moe

    seen, route = [], moe.route

    def recording(*args, **kwargs):
        weights, ids = route(*args, **kwargs)
        seen.append(int(ids.unique().numel()))
        return weights, ids
    graphs, engine.runner.graphs = engine.runner.graphs, None
    moe.route = recording
    try:
        engine.step()
    finally:
        moe.route, engine.runner.graphs = route, graphs
    return seen or everything


def copy_bandwidth(device: torch.device) -> float:
    """Bytes read + written per second by a large device-to-device copy (median of 20)."""
    size = (2 << 30) if device.type == "cuda" else (64 << 20)
    src = torch.empty(size, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    times = []
    for _ in range(23):
        torch.cuda.synchronize(device) if device.type == "cuda" else None
        start = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize(device) if device.type == "cuda" else None
        times.append(time.perf_counter() - start)
    return 2 * size / sorted(times[3:])[len(times[3:]) // 2]
