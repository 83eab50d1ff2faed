"""HF DBRX checkpoint -> TensorRT-LLM checkpoint (docs/trtllm-checkpoint.md).

    summary = convert(ConvertOptions(model_dir, output_dir, tp_size=2),
                      progress=lambda fraction, message: ..., check=raise_if_cancelled)

Checks everything it can first (plan.py), then writes into a temporary sibling
of the output directory: calibration (once, for --int8_kv_cache), every rank
file, config.json, kv_cache_scales.json; manifest.json last, then the rename.
A failure or a cancel leaves nothing behind.
"""

from pathlib import Path

from dbrx_serve.shared.artifacts import MANIFEST, artifact_dir, file_sha256, write_json
from dbrx_serve.shared.kv_scales import SCALES_FILE, KVScales
from dbrx_serve.shared.parallel import run_tasks

from .calibration import calibrate
from .checkpoint_config import checkpoint_config
from .options import ConvertOptions
from .plan import ConvertPlan, plan_conversion
from dbrx_serve.shared.progress import Check, Progress, Reporter
from .ranks import RankTask, convert_rank, rank_path

PRODUCER = "dbrx-serve converter"


def convert(options: ConvertOptions, progress: Progress | None = None, check: Check | None = None) -> dict:
    """Run a conversion; returns a summary (output dir, manifest hash, rank count)."""
    plan = plan_conversion(options)
    reporter = Reporter(plan.total_steps, progress, check)
    reporter.check()
    inputs = [options.model_dir] + ([options.calib_dataset] if options.calib_dataset else [])
    with artifact_dir(plan.output_dir, PRODUCER, inputs, options.to_dict(), options.overwrite,
                      before_publish=reporter.publish) as temp:
        scales = run_calibration(plan, reporter)
        run_tasks(convert_rank, rank_tasks(plan, temp, scales), options.workers, reporter)
        write_configs(plan, temp, scales)
    return {"output_dir": str(plan.output_dir), "manifest_sha256": file_sha256(plan.output_dir / MANIFEST),
            "world_size": plan.mapping.world_size}


def run_calibration(plan: ConvertPlan, reporter: Reporter) -> KVScales | None:
    if plan.calibration is None:
        return None
    layers = plan.config.n_layers
    return calibrate(plan.options.model_dir, plan.calibration,
                     lambda i: reporter.step(f"calibration: layer {i + 1} of {layers}"))


def rank_tasks(plan: ConvertPlan, root: Path, scales: KVScales | None) -> list[RankTask]:
    weight_only = plan.options.weight_only if plan.options.quantize_now else None
    kv_scaling = scales.trtllm if scales else None
    return [RankTask(str(plan.options.model_dir), plan.mapping, rank, plan.dtype, rank_path(root, rank),
                     weight_only, kv_scaling) for rank in range(plan.mapping.world_size)]


def write_configs(plan: ConvertPlan, root: Path, scales: KVScales | None) -> None:
    config = checkpoint_config(plan.config, plan.mapping, plan.dtype, plan.options.logits_dtype,
                               plan.options.weight_only, plan.options.int8_kv_cache)
    write_json(root / "config.json", config)
    if scales is not None:
        write_json(root / SCALES_FILE, scales.to_json())
