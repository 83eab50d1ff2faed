"""What a build is asked to do: trtllm-build's flags, with its defaults, as one
frozen value validated when made, so limits that do not fit together are
refused before any work. What needs the model (the default max_seq_len, the
max_input_len clip) is resolved in `limits()` once the checkpoint is read."""

import logging
from dataclasses import asdict, dataclass
from typing import Any

from dbrx_serve.shared.errors import InvalidInput, shown
from dbrx_serve.shared.options import options_from_dict

log = logging.getLogger("dbrx_serve.builder")

KV_CACHE_TYPES = ("paged",)  # trtllm-build also knows "continuous" and "disabled"; our engine pages
KV_CACHE_DTYPES = ("model", "int8")  # None: int8 when the checkpoint has INT8 KV scales, else the model dtype
PLUGIN_DTYPES = ("auto", "float16", "float32", "bfloat16", "int32", "disable")
SWITCHES = ("enable", "disable")
TUNE_MODES = ("off", "fast", "full")  # kernel tuning on a CUDA device (kernel_tuning.py)
LOG_LEVELS = ("internal_error", "error", "warning", "info", "verbose", "debug", "trace")


@dataclass(frozen=True)
class BuildLimits:
    """The engine's limits, every one resolved against the model (build_config's numbers)."""

    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    max_num_tokens: int
    max_beam_width: int
    tokens_per_block: int


@dataclass(frozen=True)
class BuildOptions:
    checkpoint_dir: str
    output_dir: str = "engine_outputs"
    max_batch_size: int = 2048
    max_input_len: int = 1024  # clipped to max_seq_len
    max_seq_len: int | None = None  # None: the model's max_position_embeddings
    max_beam_width: int = 1
    max_num_tokens: int = 8192
    kv_cache_type: str = "paged"
    kv_cache_dtype: str | None = None
    tokens_per_block: int = 32
    gpt_attention_plugin: str = "auto"  # plugin flags choose TensorRT kernels: recorded, not used
    gemm_plugin: str | None = None
    moe_plugin: str = "auto"
    context_fmha: str = "enable"
    remove_input_padding: str = "enable"
    tokenizer_dir: str | None = None  # None: the HF model dir the checkpoint's manifest names, if it has one
    workers: int = 1
    tune: str = "fast"  # skipped (logged) without a CUDA device
    log_level: str = "info"
    overwrite: bool = False

    def __post_init__(self):
        for name in ("checkpoint_dir", "output_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise InvalidInput(f"--{name} is required")
        self._check_counts()
        self._check_choices()

    def _check_counts(self) -> None:
        for name in ("max_batch_size", "max_input_len", "max_num_tokens", "workers", "tokens_per_block"):
            _check_positive(name, getattr(self, name))
        if self.max_seq_len is not None:
            _check_positive("max_seq_len", self.max_seq_len)
        if self.max_beam_width != 1:
            raise InvalidInput(f"--max_beam_width {self.max_beam_width} is not supported: our engine samples "
                               "one beam; pass --max_beam_width 1 (the default)")
        if self.tokens_per_block & (self.tokens_per_block - 1):
            raise InvalidInput(f"--tokens_per_block {self.tokens_per_block} must be a power of two (e.g. 32, "
                               "the default, or 64)")

    def _check_choices(self) -> None:
        _check_choice("kv_cache_type", self.kv_cache_type, KV_CACHE_TYPES,
                      " (our engine always pages its KV cache)")
        _check_choice("kv_cache_dtype", self.kv_cache_dtype, KV_CACHE_DTYPES, allow_none=True)
        for name in ("gpt_attention_plugin", "moe_plugin"):
            _check_choice(name, getattr(self, name), PLUGIN_DTYPES)
        _check_choice("gemm_plugin", self.gemm_plugin, PLUGIN_DTYPES, allow_none=True)
        for name in ("context_fmha", "remove_input_padding"):
            _check_choice(name, getattr(self, name), SWITCHES)
        _check_choice("log_level", self.log_level, LOG_LEVELS)
        _check_choice("tune", self.tune, TUNE_MODES, " (kernel tuning on a CUDA device)")

    def limits(self, max_position_embeddings: int) -> BuildLimits:
        """The limits for a model, clipped as trtllm-build clips them (with a log line)."""
        max_seq_len = self.max_seq_len or max_position_embeddings
        max_input_len = self.max_input_len
        if max_input_len > max_seq_len:
            log.warning("max_input_len %d is larger than max_seq_len %d: clipped to %d",
                        max_input_len, max_seq_len, max_seq_len)
            max_input_len = max_seq_len
        max_num_tokens = min(self.max_num_tokens, self.max_batch_size * max_seq_len)
        return BuildLimits(self.max_batch_size, max_input_len, max_seq_len, max_num_tokens,
                           self.max_beam_width, self.tokens_per_block)

    def plugin_config(self) -> dict[str, Any]:
        return {"gpt_attention_plugin": self.gpt_attention_plugin, "gemm_plugin": self.gemm_plugin,
                "moe_plugin": self.moe_plugin, "context_fmha": self.context_fmha,
                "remove_input_padding": self.remove_input_padding}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "BuildOptions":
        return options_from_dict(cls, values, "build")


def _check_positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidInput(f"--{name} must be a positive integer, got {shown(value)}")


def _check_choice(name: str, value, choices: tuple, why: str = "", allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value not in choices:
        raise InvalidInput(f"unknown --{name} {shown(value)}: choose one of {', '.join(choices)}{why}")
