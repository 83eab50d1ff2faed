"""What a conversion is asked to do: convert_checkpoint.py's flags as one
frozen value, validated when made, so a bad combination is refused before any
work (the checks that need the model itself are in plan.py)."""

from dataclasses import asdict, dataclass
from typing import Any

from dbrx_serve.shared.config import DTYPES
from dbrx_serve.shared.errors import InvalidInput, shown
from dbrx_serve.shared.mapping import Mapping
from dbrx_serve.shared.options import options_from_dict

from dbrx_serve.shared.quantization import SCHEMES, WeightOnly, scheme

LOGITS_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class ConvertOptions:
    model_dir: str
    output_dir: str
    dtype: str | None = None  # None: the HF config's torch_dtype
    tp_size: int = 1
    pp_size: int = 1
    moe_tp_size: int | None = None
    moe_ep_size: int | None = None
    use_weight_only: bool = False
    weight_only_precision: str = "int8"
    group_size: int | None = None  # int4 group-wise scales (64 or 128 input columns a scale); None: per channel
    quantize_at_build: bool = False
    int8_kv_cache: bool = False
    calib_dataset: str | None = None  # jsonl with an "article" field; None: the built-in prompts
    calib_size: int | None = None  # None: every built-in prompt, or 1 article of a dataset (as TensorRT-LLM)
    logits_dtype: str = "float32"
    workers: int = 1
    overwrite: bool = False

    def __post_init__(self):
        for name in ("model_dir", "output_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise InvalidInput(f"{name} is required")
        _check_choice("dtype", self.dtype, DTYPES, allow_none=True)
        _check_choice("logits_dtype", self.logits_dtype, LOGITS_DTYPES)
        _check_choice("weight_only_precision", self.weight_only_precision, tuple(SCHEMES))
        self.mapping  # validates tp/pp/moe sizes
        self._check_combinations()

    def _check_combinations(self) -> None:
        if self.group_size is not None:
            if not self.use_weight_only:
                raise InvalidInput("--group_size needs --use_weight_only --weight_only_precision int4")
            self.weight_only  # validates the precision and group size together
        if self.quantize_at_build and not self.use_weight_only:
            raise InvalidInput("--quantize_at_build needs --use_weight_only (it names the weight-only precision)")
        if not self.int8_kv_cache and (self.calib_dataset or self.calib_size is not None):
            raise InvalidInput("--calib_dataset and --calib_size only apply with --int8_kv_cache")
        if self.calib_size is not None and (not isinstance(self.calib_size, int) or self.calib_size < 1):
            raise InvalidInput(f"calib_size must be a positive integer, got {shown(self.calib_size)}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise InvalidInput(f"workers must be a positive integer, got {shown(self.workers)}")

    @property
    def mapping(self) -> Mapping:
        return Mapping.from_flags(self.tp_size, self.pp_size, self.moe_tp_size, self.moe_ep_size)

    @property
    def weight_only(self) -> WeightOnly | None:
        """The weight-only scheme in effect, or None (the precision has no effect without use_weight_only)."""
        return scheme(self.weight_only_precision, self.group_size) if self.use_weight_only else None

    @property
    def quantize_now(self) -> bool:
        """Whether the converter itself writes int8 weights (not when the builder quantizes)."""
        return self.use_weight_only and not self.quantize_at_build

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ConvertOptions":
        return options_from_dict(cls, values, "convert")


def _check_choice(name: str, value, choices: tuple, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value not in choices:
        raise InvalidInput(f"unknown {name} {shown(value)}: choose one of {', '.join(choices)}")
