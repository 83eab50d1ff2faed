"""The inference server's settings, built once at the edge (CLI or tests)."""

import re
from dataclasses import dataclass, field

from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.rpc import ServerConfig

from .limits import check_fraction

DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class InferenceServiceConfig:
    """engine_dir: a built engine (dbrx build). device: cpu, cuda, cuda:N, or auto (cuda when
    present). max_queue_size, max_batch_size: runtime limits (None: the engine's own; a batch
    can only be made smaller than the build's). gpu_memory_fraction, memory_budget_bytes: the
    memory budget the KV pool is sized under (limits.py; None: the default). verify_checksums:
    hash every byte of the engine at start instead of the quick check. tokenizer_dir: replaces
    the engine's tokenizer/."""

    engine_dir: str
    device: str = "auto"
    max_queue_size: int | None = None
    max_batch_size: int | None = None
    gpu_memory_fraction: float | None = None
    memory_budget_bytes: int | None = None
    verify_checksums: bool = False
    tokenizer_dir: str | None = None
    server: ServerConfig = field(default_factory=ServerConfig)

    def __post_init__(self):
        if not self.engine_dir:
            raise InvalidInput("--engine_dir is required: a directory written by dbrx build")
        if not isinstance(self.device, str) or not DEVICE.fullmatch(self.device):
            raise InvalidInput(f"--device must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        for name, value in self.runtime_limits.items():
            if name != "gpu_memory_fraction" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidInput(f"--{name} must be a positive integer, got {value!r}")
        if self.gpu_memory_fraction is not None:
            check_fraction("--gpu_memory_fraction", self.gpu_memory_fraction)

    @property
    def runtime_limits(self) -> dict[str, int | float]:
        limits = {"max_queue_size": self.max_queue_size, "max_batch_size": self.max_batch_size,
                  "gpu_memory_fraction": self.gpu_memory_fraction, "memory_budget_bytes": self.memory_budget_bytes}
        return {name: value for name, value in limits.items() if value is not None}
