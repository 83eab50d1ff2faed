"""TensorRT-LLM checkpoint -> engine directory for our PyTorch backend
(docs/trtllm-checkpoint.md, "Engine directory").

    summary = build(BuildOptions(checkpoint_dir, output_dir), progress=print_it, check=raise_if_cancelled)

Checks everything first (plan.py), then writes into a temporary sibling of
the output directory: every rank file (one at a time, or `workers` in
parallel), the kernel tuning on a CUDA device (kernel_tuning.py), config.json, kv_cache_scales.json for an int8 KV cache, the
tokenizer files; manifest.json last, then the rename. A failure or a cancel
leaves nothing behind.
"""

from pathlib import Path

from dbrx_serve.shared.progress import Check, Progress, Reporter
from dbrx_serve.shared.artifacts import MANIFEST, artifact_dir, file_sha256, write_json
from dbrx_serve.shared.kv_scales import SCALES_FILE

from .engine_config import engine_config
from .kernel_tuning import run_tuning
from .options import BuildOptions
from dbrx_serve.shared.parallel import run_tasks
from .plan import BuildPlan, plan_build
from .ranks import build_rank, rank_tasks
from .tokenizer_files import copy_tokenizer

PRODUCER = "dbrx-serve builder"


def build(options: BuildOptions, progress: Progress | None = None, check: Check | None = None) -> dict:
    """Run a build; returns a summary (output dir, manifest hash, ranks, KV dtype, tokenizer)."""
    plan = plan_build(options)
    reporter = Reporter(plan.total_steps, progress, check)
    reporter.check()
    with artifact_dir(plan.output_dir, PRODUCER, plan.inputs, options.to_dict(), options.overwrite,
                      before_publish=reporter.publish) as temp:
        run_tasks(build_rank, rank_tasks(plan.checkpoint, temp), options.workers, reporter)
        write_files(plan, temp, run_tuning(plan.tuning, reporter))
        reporter.step("config and tokenizer written")
    return {"output_dir": str(plan.output_dir), "manifest_sha256": file_sha256(plan.output_dir / MANIFEST),
            "world_size": plan.checkpoint.mapping.world_size, "kv_cache_dtype": plan.kv_cache_dtype,
            "tokenizer": plan.tokenizer_dir is not None}


def write_files(plan: BuildPlan, root: Path, kernel_tuning: dict) -> None:
    write_json(root / "config.json", engine_config(plan, kernel_tuning))
    if plan.kv_scales is not None:
        write_json(root / SCALES_FILE, plan.kv_scales.to_json())
    if plan.tokenizer_dir is not None:
        copy_tokenizer(plan.tokenizer_dir, root, plan.checkpoint.model.vocab_size)
