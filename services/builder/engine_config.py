"""The engine's config.json: trtllm-build's shape (`version`,
`pretrained_config` = the checkpoint's config verbatim, `build_config`), with
our backend's name and its kernel tuning table (kernel_tuning.py)."""

from dbrx_serve import __version__
from dbrx_serve.shared.weight_only import weight_layout

from .plan import BuildPlan

BACKEND = "dbrx-serve-torch"


def engine_config(plan: BuildPlan, kernel_tuning: dict) -> dict:
    limits, options, weight_only = plan.limits, plan.options, plan.checkpoint.weight_only
    build_config = {
        "max_batch_size": limits.max_batch_size,
        "max_input_len": limits.max_input_len,
        "max_seq_len": limits.max_seq_len,
        "max_num_tokens": limits.max_num_tokens,
        "max_beam_width": limits.max_beam_width,
        "kv_cache_type": options.kv_cache_type,
        "tokens_per_block": limits.tokens_per_block,
        "kv_cache_dtype": plan.kv_cache_dtype,
        "plugin_config": options.plugin_config(),  # TensorRT's kernel choices: recorded, not used by our backend
        "backend": BACKEND,
        "weight_layout": weight_layout(weight_only and weight_only.precision),  # what the kernels read as stored
        "weight_only": weight_only and {"precision": weight_only.precision, "group_size": weight_only.group_size},
        "kernel_tuning": kernel_tuning,  # {GPU name: {shape key: {batch bucket: GemmConfig}}}
        "build_options": options.to_dict(),
    }
    return {"version": __version__, "pretrained_config": plan.checkpoint.config, "build_config": build_config}
