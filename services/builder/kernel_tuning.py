"""The build's kernel tuning (`--tune off|fast|full`), our analogue of
TensorRT's tactic selection: on a CUDA device, each GEMM shape of the engine's
ranks is timed at each decode batch bucket the runtime captures
(services/inference/graphs.py) by services/inference/kernels/tuner.py, on
random weights of the engine's shapes and formats, and the table of this GPU
goes into `build_config.kernel_tuning` (docs/trtllm-checkpoint.md). Without a
CUDA device, or with `--tune off`, the engine stores none (a log line says so)
and the runtime launches its default tiles."""

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from dbrx_serve.shared.config import DbrxConfig
from dbrx_serve.shared.mapping import Mapping
from dbrx_serve.shared.progress import Reporter
from dbrx_serve.shared.quantization import WeightOnly
from dbrx_serve.shared.reference import torch_dtype

from .checkpoint import Checkpoint
from .options import BuildLimits, BuildOptions

log = logging.getLogger("dbrx_serve.builder")


@dataclass(frozen=True)
class TuningPlan:
    mode: str  # "fast" or "full"
    gemms: list  # tuner.EngineGemm, each shape of every rank once
    buckets: list[int]  # decode batch sizes the runtime captures

    @property
    def steps(self) -> int:
        return len(self.gemms) * len(self.buckets)


def plan_tuning(options: BuildOptions, ckpt: Checkpoint, limits: BuildLimits) -> TuningPlan | None:
    """What to time, or None (logged) when the engine stores no tuning."""
    if options.tune == "off":
        log.info("kernel tuning: off (--tune off): the runtime uses its default tiles")
        return None
    if not torch.cuda.is_available():
        log.info("kernel tuning: skipped, no CUDA device (the runtime uses its default tiles)")
        return None
    gemms = engine_gemms(ckpt.model, ckpt.mapping, ckpt.weight_only, torch_dtype(ckpt.model.torch_dtype))
    return TuningPlan(options.tune, gemms, decode_buckets(limits))


def engine_gemms(config: DbrxConfig, mapping: Mapping, weight_only: WeightOnly | None, dtype: torch.dtype,
                 ranks: Iterable[int] | None = None) -> list:
    """The GEMMs of the ranks' models (every rank's by default) as the runtime makes them, each shape
    once (on the meta device: shapes only); bench/decode.py tunes rank 0's the same way."""
    from dbrx_serve.services.inference.backends import BACKENDS
    from dbrx_serve.services.inference.kernels.tuner import model_gemms
    from dbrx_serve.services.inference.model_runner import empty_model

    gemms = {}
    for rank in range(mapping.world_size) if ranks is None else ranks:
        model = empty_model(config, mapping, weight_only, BACKENDS["triton"], rank).to(dtype)
        gemms.update({g.weights.key(g.op): g for g in model_gemms(model)})
    return list(gemms.values())


def decode_buckets(limits: BuildLimits) -> list[int]:
    """The batch sizes of the decode CUDA graphs under the runtime's default max_graph_batch_size."""
    from dbrx_serve.services.inference.graphs import BUCKETS
    from dbrx_serve.services.inference.limits import EngineLimits

    largest = min(EngineLimits.max_graph_batch_size, limits.max_batch_size, limits.max_num_tokens)
    return [b for b in BUCKETS if b <= largest]


def run_tuning(plan: TuningPlan | None, reporter: Reporter) -> dict:
    """build_config.kernel_tuning: {GPU name: table} (empty without a plan)."""
    if plan is None:
        return {}
    from dbrx_serve.services.inference.kernels.tuner import tune
    from dbrx_serve.services.inference.kernels.tuning import device_name

    device = torch.device("cuda", torch.cuda.current_device())
    log.info("kernel tuning (%s): %d GEMM shapes at batch sizes %s on %s", plan.mode, len(plan.gemms),
             plan.buckets, device_name(device))
    return {device_name(device): tune(plan.gemms, plan.buckets, plan.mode, device, on_step=reporter.step)}
