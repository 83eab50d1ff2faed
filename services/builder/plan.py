"""Everything a build can check before it writes a byte: the output path, the
checkpoint (manifest, config, every rank file's tensors), the limits against
the model, the KV-cache dtype and scales, and where the tokenizer comes from."""

from dataclasses import dataclass
from pathlib import Path

from dbrx_serve.shared.artifacts import check_output_dir
from dbrx_serve.shared.kv_scales import KVScales

from .checkpoint import Checkpoint, read_checkpoint, stored_layout
from .kernel_tuning import TuningPlan, plan_tuning
from .kv_scales import kv_cache_dtype, kv_scales
from .layout import group_names
from .options import BuildLimits, BuildOptions
from .tokenizer_files import tokenizer_source


@dataclass(frozen=True)
class BuildPlan:
    options: BuildOptions
    checkpoint: Checkpoint
    limits: BuildLimits
    kv_cache_dtype: str  # "model" or "int8"
    kv_scales: KVScales | None  # for int8
    tokenizer_dir: Path | None
    output_dir: Path
    tuning: TuningPlan | None  # None: no kernel tuning (off, or no CUDA device)

    @property
    def total_steps(self) -> int:
        """Tensor groups of every rank, the tuning's timings, and one for the configs and tokenizer."""
        ckpt = self.checkpoint
        groups = sum(len(group_names(stored_layout(ckpt, r))) for r in range(ckpt.mapping.world_size))
        return groups + (self.tuning.steps if self.tuning else 0) + 1

    @property
    def inputs(self) -> list[Path]:
        return [self.checkpoint.root] + ([self.tokenizer_dir] if self.tokenizer_dir else [])


def plan_build(options: BuildOptions) -> BuildPlan:
    output_dir = check_output_dir(options.output_dir, options.overwrite, [options.checkpoint_dir])
    ckpt = read_checkpoint(options.checkpoint_dir)
    limits = options.limits(ckpt.model.max_seq_len)
    kv_dtype = kv_cache_dtype(ckpt, options.kv_cache_dtype)
    scales = kv_scales(ckpt) if kv_dtype == "int8" else None
    return BuildPlan(options, ckpt, limits, kv_dtype, scales, tokenizer_source(ckpt, options.tokenizer_dir),
                     output_dir, plan_tuning(options, ckpt, limits))
