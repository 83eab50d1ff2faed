"""Everything a conversion can check before it writes a byte: the output path,
the HF config (present, DBRX), the mapping against the model, every tensor's
presence and shape (from the safetensors headers), and, for --int8_kv_cache,
the tokenizer and the calibration text."""

from dataclasses import dataclass
from pathlib import Path

from dbrx_serve.shared.artifacts import check_output_dir
from dbrx_serve.shared.config import DbrxConfig
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
    with HFCheckpoint(options.model_dir) as ckpt:
        ckpt.check_layout()
    calibration = None
    if options.int8_kv_cache:
        calibration = calibration_set(options.model_dir, options.calib_dataset, options.calib_size)
    return ConvertPlan(options, config, mapping, options.dtype or config.torch_dtype, output_dir, calibration)
