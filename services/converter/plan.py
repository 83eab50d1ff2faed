"""Everything a conversion can check before it writes a byte: the output path,
the HF config (present, DBRX), the mapping against the model, every tensor's
presence and shape (from the safetensors headers), and, for --int8_kv_cache,
the tokenizer and the calibration text."""

from dataclasses import dataclass
from pathlib import Path

from dbrx_serve.shared.artifacts import check_output_dir
from dbrx_serve.shared.config import DbrxConfig
from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.hf_checkpoint import HFCheckpoint
from dbrx_serve.shared.mapping import Mapping

from .calibration_text import CalibrationSet, calibration_set
from .options import ConvertOptions
from .ranks import group_count


@dataclass(frozen=True)
class ConvertPlan:
    options: ConvertOptions
    config: DbrxConfig
    mapping: Mapping
    dtype: str  # the options' dtype, or the HF config's
    output_dir: Path
    calibration: CalibrationSet | None

    @property
    def total_steps(self) -> int:
        """Calibration's layers, then every rank's tensor groups."""
        calib = self.config.n_layers if self.calibration else 0
        ranks = range(self.mapping.world_size)
        return calib + sum(group_count(self.mapping, r, self.config.n_layers) for r in ranks)


def plan_conversion(options: ConvertOptions) -> ConvertPlan:
    output_dir = check_output_dir(options.output_dir, options.overwrite, [options.model_dir])
    config = DbrxConfig.from_hf_dir(options.model_dir)
    mapping = options.mapping
    mapping.check_fits(config)
    if options.group_size is not None:
        check_group_size(config, mapping, options.group_size)
    with HFCheckpoint(options.model_dir) as ckpt:
        ckpt.check_layout()
    calibration = None
    if options.int8_kv_cache:
        calibration = calibration_set(options.model_dir, options.calib_dataset, options.calib_size)
    return ConvertPlan(options, config, mapping, options.dtype or config.torch_dtype, output_dir, calibration)


def check_group_size(config: DbrxConfig, mapping: Mapping, group_size: int) -> None:
    """Each GEMM's input width on a rank must be a whole number of groups (docs/trtllm-checkpoint.md)."""
    widths = {"attention.qkv and mlp.fc (hidden size)": config.d_model,
              "attention.dense (hidden size / tp_size)": config.d_model // mapping.tp_size,
              "mlp.proj (ffn_hidden_size / moe_tp_size)": config.ffn_hidden_size // mapping.moe_tp_size}
    for gemm, width in widths.items():
        if width % group_size:
            raise InvalidInput(f"--group_size {group_size} does not divide the input width {width} of {gemm}: "
                               "choose a group size that divides it, or int4 per channel (no --group_size)")
