"""Time the GEMM kernel's launch configurations for an engine's shapes and keep
the fastest: what `dbrx build --tune` stores in the engine (tuning.py's table)
and what bench/gemm_tune.py prints.

Each GEMM (`EngineGemm`: op, weight shape and format) is timed at each batch
bucket on random weights of its shape and format (speed does not depend on
their values), the experts routed at random; every candidate configuration is
a CUDA-graph replay timed by its median (`graph_ms`). `fast` tries a few
configurations around the default, `full` the wide grid. The experts' gate+up
and down GEMMs share one block_m (moe.py's `align`), so they are chosen
together: the block_m whose two fastest configurations add up least.
"""

from dataclasses import dataclass, replace
from typing import Callable

import torch
import triton

from dbrx_serve.shared.errors import InvalidInput

from .gemm import FLOAT, Weights, gemm, linear_config, moe_config, out_columns, packed_fits, warps_for
from .moe import align, expert_weights
from .tuning import LINEAR, MOE_DOWN, MOE_UP, GemmConfig, check_launchable

MODES = ("fast", "full")


@dataclass(frozen=True)
class EngineGemm:
    """One GEMM of an engine as the kernels see it: its op and weight (the meta device will do)."""

    op: str  # tuning.py's LINEAR, MOE_UP or MOE_DOWN
    weights: Weights
    top_k: int = 1  # pairs per token, for the experts


def model_gemms(model) -> list[EngineGemm]:
    """The GEMMs our kernels run in a model whose modules kernels/__init__.py swapped, each shape once
    (float attention projections stay nn.Linear: cuBLAS, not ours)."""
    from . import TritonWeightOnlyLinear

    gemms = {}
    for block in model.transformer.layers:
        moe = block.mlp
        found = [EngineGemm(MOE_UP, expert_weights(moe.fc), moe.top_k),
                 EngineGemm(MOE_DOWN, expert_weights(moe.proj), moe.top_k)]
        found += [EngineGemm(LINEAR, Weights.of(m.weight, m.scale, m.precision, m.in_features))
                  for m in (block.attention.qkv, block.attention.dense) if isinstance(m, TritonWeightOnlyLinear)]
        gemms.update({g.weights.key(g.op): g for g in found})
    return list(gemms.values())


def random_weights(w: Weights, device) -> Weights:
    """Weights of w's shape, format and dtype on the device, random (int8 bytes hold int4 tiles too)."""
    if w.fmt == FLOAT:
        return replace(w, tensor=torch.randn(w.tensor.shape, dtype=w.tensor.dtype, device=device).mul_(0.02))
    q = torch.randint(-128, 128, w.tensor.shape, dtype=torch.int8, device=device)
    return replace(w, tensor=q, scale=torch.full(w.scale.shape, 1e-3, dtype=w.scale.dtype, device=device))


class GemmCase:
    """A GEMM at one number of tokens on the weights' device, with inputs and a random routing;
    `launch(config)` sets up the outputs (and the sorted pairs of its block_m) and returns the launch."""

    def __init__(self, op: str, w: Weights, top_k: int, num_tokens: int):
        self.op, self.w, self.top_k, self.num_tokens = op, w, top_k, num_tokens
        self.gated, self.num_experts, device = op == MOE_UP, w.tensor.shape[0], w.tensor.device
        self.rows = num_tokens if op == LINEAR else num_tokens * top_k  # the output's rows
        dtype = w.tensor.dtype if w.fmt == FLOAT else w.scale.dtype
        self.x = torch.randn(self.rows if op == MOE_DOWN else num_tokens, w.k, dtype=dtype, device=device)
        # top_k distinct experts a token, as the router picks them (a repeat would read fewer experts)
        self.ids = None if op == LINEAR else torch.rand(num_tokens, self.num_experts, device=device).topk(
            top_k, dim=1).indices.to(torch.int32)
        self.default = (linear_config(num_tokens, w) if op == LINEAR
                        else moe_config(num_tokens, top_k, w, gated=self.gated))

    @property
    def bytes_read(self) -> int:
        active = 1 if self.ids is None else int(self.ids.unique().numel())
        return self.w.tensor.numel() * self.w.tensor.element_size() // self.num_experts * active

    def launch(self, config: GemmConfig) -> Callable[[], torch.Tensor]:
        split = config.split_k > 1
        out = torch.empty(config.split_k, self.rows, out_columns(self.w, config, self.gated),
                          dtype=torch.float32 if split else self.x.dtype, device=self.x.device)
        target = out if split else out[0]
        moe = None if self.ids is None else (*align(self.ids, self.num_experts, 0, config.block_m), self.rows)
        return lambda: gemm(self.x, self.w, target, config, moe=moe, x_row_div=self.top_k if self.gated else 1,
                            gated=self.gated)


def candidates(case: GemmCase, mode: str) -> list[GemmConfig]:
    """The default first, then `fast`'s few neighbours or `full`'s grid; only what this GEMM can launch."""
    if mode not in MODES:
        raise ValueError(f"unknown tuning mode {mode!r}: choose one of {', '.join(MODES)}")
    grid = nearby(case) if mode == "fast" else wide(case)
    return [config for config in dict.fromkeys([case.default] + grid) if launchable(config, case)]


def nearby(case: GemmCase) -> list[GemmConfig]:
    d = case.default
    configs = [replace(d, block_n=d.block_n // 2), replace(d, block_n=d.block_n * 2),
               replace(d, split_k=d.split_k * 2), replace(d, split_k=max(1, d.split_k // 2))]
    # taller and shorter tiles (an expert's pairs spread around their mean)
    configs += [replace(d, block_m=m, num_warps=warps_for(m, case.w))  # tile_config's warps
                for m in (d.block_m // 2, d.block_m * 2) if 16 <= m <= 128]
    return configs


def wide(case: GemmCase) -> list[GemmConfig]:
    """Tiles, K splits (a quarter of the default's to four times it) and stages around the default; int
    tiles are 64 K rows deep and keep the default's way to dequantize (where DEQ 3 fits, DEQ 1 has not won
    a shape since DEQ 3 came: bench/notes-gpu.md)."""
    d = case.default
    if case.w.fmt != FLOAT:
        splits = sorted({max(1, d.split_k // 4), max(1, d.split_k // 2), d.split_k, 2 * d.split_k, 4 * d.split_k})
        return [replace(d, block_n=n, num_stages=stages, split_k=s)
                for n in (64, 128, 256) for stages in (3, 4) for s in splits]
    return [replace(d, block_n=n, block_k=k, num_stages=stages, split_k=s)
            for n, k, stages in [(64, 128, 4), (128, 128, 4), (64, 256, 3), (128, 64, 3), (128, 64, 4), (256, 64, 3)]
            for s in (d.split_k, 2 * d.split_k)]


def launchable(config: GemmConfig, case: GemmCase) -> bool:
    """What gemm() and FusedMoE run correctly here: what a stored table may hold (tuning.check_launchable),
    and DEQ 3 (int to bfloat16 by inline PTX) where packed_fits."""
    key = case.w.key(case.op)
    try:
        check_launchable(key, config, key)
    except InvalidInput:
        return False
    return config.dequant != 3 or packed_fits(case.w)


@dataclass(frozen=True)
class Timing:
    config: GemmConfig
    ms: float | None  # None: the launch failed (error)
    error: str = ""


Timer = Callable[[GemmConfig, GemmCase], float]  # ms of one launch of the case in this configuration


def graph_ms(config: GemmConfig, case: GemmCase) -> float:
    """Median ms of a CUDA-graph replay of the launch (launch gaps out of the number)."""
    return replay_ms(case.launch(config))


def replay_ms(launch: Callable[[], object], repeat: int = 1) -> float:
    """Median ms a launch, from replays of a CUDA graph of `repeat` launches back to back."""
    launch()  # compiles outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeat):
            launch()
    return triton.testing.do_bench(graph.replay, warmup=25, rep=100, return_mode="median") / repeat


def time_candidates(case: GemmCase, mode: str, timer: Timer = graph_ms) -> list[Timing]:
    """Every candidate's time, fastest first (failed launches last)."""
    timings = []
    for config in candidates(case, mode):
        try:
            timings.append(Timing(config, timer(config, case)))
        except Exception as error:  # a configuration that does not fit (shared memory, registers): go on
            timings.append(Timing(config, None, type(error).__name__))
    return sorted(timings, key=lambda t: float("inf") if t.ms is None else t.ms)


def fastest_per_block_m(timings: list[Timing]) -> dict[int, Timing]:
    best: dict[int, Timing] = {}
    for t in timings:
        if t.ms is not None and (t.config.block_m not in best or t.ms < best[t.config.block_m].ms):
            best[t.config.block_m] = t
    return best


def pick(timings: dict[str, list[Timing]], partner: dict[str, str]) -> dict[str, GemmConfig]:
    """One bucket's choice per shape key: the fastest; gate+up and its down (partner) on the block_m
    whose fastest pair adds up least. A shape with nothing that ran keeps the defaults (absent)."""
    chosen = {}
    for key, found in timings.items():
        if key in partner.values():
            continue  # chosen with its gate+up
        if key.startswith(MOE_UP + ":") and key not in partner:
            continue  # no down to share its block_m with: the defaults
        if key not in partner:
            chosen.update({key: found[0].config} if found and found[0].ms is not None else {})
            continue
        up, down = fastest_per_block_m(found), fastest_per_block_m(timings[partner[key]])
        shared = sorted(set(up) & set(down), key=lambda bm: up[bm].ms + down[bm].ms)
        if shared:
            chosen[key], chosen[partner[key]] = up[shared[0]].config, down[shared[0]].config
    return chosen


def tune(gemms: list[EngineGemm], buckets: list[int], mode: str, device, timer: Timer = graph_ms,
         on_step: Callable[[str], None] = lambda message: None) -> dict[str, dict[str, dict]]:
    """The table of one GPU (tuning.py): shape key -> batch bucket -> the chosen configuration."""
    timings: dict[int, dict[str, list[Timing]]] = {b: {} for b in buckets}
    for g in gemms:
        w = random_weights(g.weights, device)
        for bucket in buckets:
            timings[bucket][w.key(g.op)] = time_candidates(GemmCase(g.op, w, g.top_k, bucket), mode, timer)
            on_step(f"kernel tuning: {w.key(g.op)} at batch {bucket}")
        del w
    partner = expert_partners(gemms)
    table: dict[str, dict[str, dict]] = {}
    for bucket in buckets:
        for key, config in pick(timings[bucket], partner).items():
            table.setdefault(key, {})[str(bucket)] = config.to_dict()
    return table


def expert_partners(gemms: list[EngineGemm]) -> dict[str, str]:
    """gate+up's shape key -> its down's: the same experts (count, format), down's K its N / 2."""
    downs = {(g.weights.fmt, g.weights.group_size, g.weights.n, g.weights.k, g.weights.tensor.shape[0]): g
             for g in gemms if g.op == MOE_DOWN}
    partner = {}
    for g in gemms:
        w = g.weights
        down = downs.get((w.fmt, w.group_size, w.k, w.n // 2, w.tensor.shape[0])) if g.op == MOE_UP else None
        if down is not None:
            partner[w.key(MOE_UP)] = down.weights.key(MOE_DOWN)
    return partner

