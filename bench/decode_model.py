"""What bench/decode.py measures on: DBRX-width engines with random weights made
on the device, the bytes a step must read, and the copy bandwidth."""

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from dbrx_serve.services.converter.checkpoint_config import checkpoint_config
from dbrx_serve.services.inference.engine import Engine
from dbrx_serve.services.inference.engine_dir import load_engine_dir
from dbrx_serve.services.inference.limits import EngineLimits
from dbrx_serve.shared.artifacts import write_json
from dbrx_serve.shared.config import DbrxConfig
from dbrx_serve.shared.mapping import Mapping
from dbrx_serve.shared.quantization import SCHEMES, WeightOnly, scheme
from dbrx_serve.shared.weight_only import weight_layout

BASE_SEED = 1234
FULL = dict(vocab_size=100352, d_model=6144, n_heads=48, kv_n_heads=8, ffn_hidden_size=10752, moe_num_experts=16,
            moe_top_k=4, max_seq_len=32768, rope_theta=500000.0, clip_qkv=8.0)
SMOKE = dict(vocab_size=512, d_model=64, n_heads=4, kv_n_heads=2, ffn_hidden_size=64, moe_num_experts=4,
             moe_top_k=2, max_seq_len=2048, rope_theta=500000.0, clip_qkv=8.0)
TOKENS_PER_BLOCK = 32


@dataclass(frozen=True)
class ModelSpec:
    width: dict
    layers: int
    precision: str  # bf16, int8, int4
    mapping: Mapping = Mapping()
    group_size: int | None = None  # int4 with group-wise scales (shared/quantization.py)

    def config(self, dtype: str) -> DbrxConfig:
        return DbrxConfig(n_layers=self.layers, torch_dtype=dtype, **self.width)

    @property
    def name(self) -> str:
        group = f"g{self.group_size}" if self.group_size else ""
        return (f"{self.precision}{group}-{self.layers}L"
                + (f"-{layout_name(self.mapping)}" if self.mapping.world_size > 1 else ""))


def parse_layout(name: str) -> Mapping:
    """`tp2`, `ep2` (experts over 2 ranks: tp_size 2, moe_tp 1, moe_ep 2), `pp2`, `tp2pp2`, `tp2ep2`
    (tp_size 4: moe_tp 2 x moe_ep 2); `world1` or `tp1` is one rank."""
    pieces = re.findall(r"(tp|ep|pp|world)(\d+)", name)
    parts = dict(pieces)
    if (not parts or "".join(k + v for k, v in pieces) != name or len(parts) != len(pieces)
            or parts.get("world", "1") != "1"):
        raise ValueError(f"layout {name!r}: write it as tpN, epN, ppN or a mix such as tp2pp2")
    tp, ep, pp = (int(parts.get(key, 1)) for key in ("tp", "ep", "pp"))
    return Mapping(tp * ep, pp, tp, ep)


def layout_name(mapping: Mapping) -> str:
    moe_tp, ep = mapping.moe_tp_size, mapping.moe_ep_size
    return "".join(f"{k}{v}" for k, v in (("tp", moe_tp), ("ep", ep), ("pp", mapping.pp_size)) if v > 1) or "world1"


def write_engine_dir(path: Path, spec: ModelSpec, dtype: str, limits: EngineLimits,
                     kernel_tuning: dict | None = None) -> Path:
    """An engine directory with no rank files: its config says every rank makes dummy weights
    (services/inference/dummy_weights.py), so each rank of a world builds its own share; and the
    kernel tuning a build stores (tune_kernels), if any."""
    build = {name: getattr(limits, name) for name in ("max_batch_size", "max_seq_len")}
    path.mkdir(parents=True, exist_ok=True)
    s = weight_only_of(spec)
    write_json(path / "config.json", {"pretrained_config": checkpoint_config(spec.config(dtype), spec.mapping, dtype,
                                                                              weight_only=s),
                                      "build_config": {**build, "dummy_weights": True,
                                                       "weight_layout": weight_layout(s and s.precision),
                                                       "kernel_tuning": kernel_tuning or {}}})
    return path


def tune_kernels(spec: ModelSpec, mode: str, buckets: list[int]) -> dict:
    """build_config.kernel_tuning as `dbrx build --tune MODE` writes it (services/builder/kernel_tuning.py),
    for rank 0's GEMMs at these batch sizes (a decode step of B sequences takes the bucket >= B)."""
    from dbrx_serve.services.builder.kernel_tuning import TuningPlan, engine_gemms, run_tuning
    from dbrx_serve.shared.progress import Reporter

    gemms = engine_gemms(spec.config("bfloat16"), spec.mapping, weight_only_of(spec), torch.bfloat16, ranks=[0])
    plan = TuningPlan(mode, gemms, buckets)
    return run_tuning(plan, Reporter(plan.steps))


def weight_only_of(spec: ModelSpec) -> WeightOnly | None:
    return scheme(spec.precision, spec.group_size) if spec.precision in SCHEMES else None


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


def make_engine(spec: ModelSpec, device: torch.device, backend: str | None, limits: EngineLimits,
                workdir: Path, kernel_tuning: dict | None = None) -> Engine:
    """The engine a server would run, on dummy weights made on the device(s): one rank here, or rank
    0 of the MPI world this process was launched in (the other ranks follow: executor.py)."""
    dtype = "float32" if device.type == "cpu" else "bfloat16"
    engine_dir = write_engine_dir(workdir / spec.name, spec, dtype, limits, kernel_tuning)
    engine = Engine(load_engine_dir(engine_dir, verify=False), limits, device, backend, verify=(False, False))
    if device.type == "cuda":
        engine.runner.cache.k.normal_()  # random KV: attention is not timed on zeros
        engine.runner.cache.v.normal_()
    return engine


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def step_bytes(engine: Engine, batch: int, context: int, active: list[int]) -> dict[str, int]:
    """The bytes a decode step must read on this rank (its share of the model), by the kernels that read
    them: `gemm` our GEMM kernels (gemm_launches), `cublas` torch's matmuls (the LM head; float attention
    projections), `attention` the KV cache (read, and one token written per sequence and layer), `other`
    the router, the norms and the embedding rows."""
    from dbrx_serve.services.inference.kernels import TritonWeightOnlyLinear

    model = engine.runner.model
    parts = dict.fromkeys(("gemm", "cublas", "attention", "other"), 0)
    parts["gemm"] = sum(bytes_ for _, bytes_ in gemm_launches(engine, active))
    if model.shape.has_lm_head:
        parts["cublas"] += module_bytes(model.lm_head)
        parts["other"] += module_bytes(model.transformer.ln_f)
    if model.shape.has_embedding:
        parts["other"] += batch * model.cfg.d_model * model.transformer.vocab_embedding.weight.element_size()
    for block in model.transformer.layers:
        if not isinstance(block.attention.qkv, TritonWeightOnlyLinear):
            parts["cublas"] += module_bytes(block.attention)
        parts["other"] += module_bytes(block.mlp.router) + module_bytes(block.input_layernorm) + module_bytes(
            block.post_layernorm)
    cache = engine.runner.cache
    kv_token = 2 * cache.k.shape[-2] * cache.k.shape[-1] * cache.k.element_size()  # K and V, one layer
    parts["attention"] = len(active) * batch * (context + 1) * kv_token
    return parts


def gemm_launches(engine: Engine, active: list[int]) -> list[tuple[str, int]]:
    """A decode step's launches of our GEMM kernels (gemm.py) in the order it makes them, each with the
    bytes it must read: per layer the attention projections where they are weight-only int8/int4
    (TritonWeightOnlyLinear; float ones are torch's), then the experts' gate+up and down, of the
    experts the layer's routing took (`active`, one count a layer)."""
    from dbrx_serve.services.inference.kernels import TritonWeightOnlyLinear

    layers = engine.runner.model.transformer.layers
    if len(active) != len(layers):
        raise ValueError(f"experts taken for {len(active)} layers: give one count a layer "
                         f"({len(layers)}), as one step's record_routing does")
    launches = []
    for block, experts in zip(layers, active):
        attention, mlp = block.attention, block.mlp
        if isinstance(attention.qkv, TritonWeightOnlyLinear):
            launches += [("qkv", module_bytes(attention.qkv)), ("dense", module_bytes(attention.dense))]
        n_experts = mlp.fc.weight.shape[0]
        launches += [("experts gate+up", experts * module_bytes(mlp.fc) // n_experts),
                     ("experts down", experts * module_bytes(mlp.proj) // n_experts)]
    return launches


def bytes_per_step(engine: Engine, batch: int, context: int, active: list[int]) -> int:
    """Bytes a decode step must read on this rank: step_bytes' parts together."""
    return sum(step_bytes(engine, batch, context, active).values())


@contextmanager
def routing_recorded(engine: Engine) -> Iterator[list]:
    """Within: the expert ids of each routing of the triton backend's MoE, in order (a layer's of each
    step run eagerly; a CUDA graph's replay runs no Python, so it adds none). The ids are only kept
    (no kernel, no sync inside: a profiled step stays as it runs); `experts_taken` counts them."""
    from dbrx_serve.services.inference.kernels import moe

    seen, route_and_align = [], moe.route_and_align

    def recording(*args, **kwargs):
        routed = route_and_align(*args, **kwargs)
        seen.append(routed[1])
        return routed
    moe.route_and_align = recording
    try:
        yield seen
    finally:
        moe.route_and_align = route_and_align


def experts_taken(engine: Engine, routings: list) -> list[int]:
    """How many of this rank's experts (under expert parallelism, its share) each routing took."""
    first, count = engine.runner.model.shape.expert_offset, engine.runner.model.shape.n_experts
    return [int(ids[(ids >= first) & (ids < first + count)].unique().numel()) for ids in routings]


@contextmanager
def stepping(engine: Engine, graphs, lookahead: bool) -> Iterator[None]:
    """Within: the engine steps with these CUDA graphs (None: eagerly) and lookahead; as before after."""
    saved = engine.runner.graphs, engine.lookahead
    engine.runner.graphs, engine.lookahead = graphs, lookahead
    try:
        yield
    finally:
        engine.runner.graphs, engine.lookahead = saved


def record_routing(engine: Engine) -> list[int]:
    """How many of this rank's experts each of its layers' routing took in one untimed eager step of
    the current batch: the step launched ahead, if any, is read and the next one counted, else one
    step without a launch ahead. The plain path's loop is not hooked: every expert."""
    everything = [engine.runner.model.shape.n_experts] * len(engine.runner.model.transformer.layers)
    if engine.runner.backend.name != "triton":
        return everything
    with stepping(engine, None, engine.lookahead and engine.ahead is not None), routing_recorded(engine) as routings:
        engine.step()
    return experts_taken(engine, routings) or everything


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
