"""The engine's limits: the build's (`build_config`) plus what the runtime
adds (queue length, KV pool size and the memory budget it is sized under),
one frozen value checked when made."""

from dataclasses import dataclass, fields

from dbrx_serve.shared.errors import InvalidInput

BUILD_LIMITS = ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens", "tokens_per_block")
LOWERABLE = ("max_batch_size", "max_num_tokens")
RUNTIME_LIMITS = LOWERABLE + ("max_queue_size", "num_kv_blocks", "max_graph_batch_size", "gpu_memory_fraction",
                              "memory_budget_bytes")
OPTIONAL = ("num_kv_blocks", "memory_budget_bytes")


def check_fraction(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise InvalidInput(f"{name} must lie in (0, 1], got {value!r}")


@dataclass(frozen=True)
class EngineLimits:
    max_batch_size: int = 2048
    max_input_len: int = 1024
    max_seq_len: int = 32768
    max_num_tokens: int = 8192
    tokens_per_block: int = 32
    max_queue_size: int = 4096  # waiting requests beyond this: CapacityExhausted
    num_kv_blocks: int | None = None  # None: what the memory plan leaves (memory.py)
    max_graph_batch_size: int = 256  # decode steps up to this batch replay CUDA graphs (0: none)
    gpu_memory_fraction: float = 0.9  # of a GPU's memory, the engine's in all (weights, activations, KV pool...)
    memory_budget_bytes: int | None = None  # in place of the fraction: each rank's bytes in all (the CPU's too)

    def __post_init__(self):
        check_fraction("gpu_memory_fraction", self.gpu_memory_fraction)
        for f in fields(self):
            value = getattr(self, f.name)
            if (value is None and f.name in OPTIONAL) or f.name == "gpu_memory_fraction":
                continue
            low = 0 if f.name == "max_graph_batch_size" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInput(f"engine limit {f.name} must be an integer >= {low}, got {value!r}")
        if self.max_input_len > self.max_seq_len:
            raise InvalidInput(f"max_input_len {self.max_input_len} exceeds max_seq_len {self.max_seq_len}")

    @property
    def max_blocks_per_seq(self) -> int:
        return -(-self.max_seq_len // self.tokens_per_block)

    @classmethod
    def from_build_config(cls, build: dict, **runtime) -> "EngineLimits":
        """The build's limits; `runtime` may lower max_batch_size and max_num_tokens (never raise them)
        and set the others of RUNTIME_LIMITS (queue, KV pool, CUDA graphs, memory budget)."""
        missing = [name for name in BUILD_LIMITS if name not in build]
        if missing:
            raise InvalidInput(f"engine config.json build_config lacks {', '.join(missing)}")
        unknown = sorted(set(runtime) - set(RUNTIME_LIMITS))
        if unknown:
            raise InvalidInput(f"unknown runtime limit(s) {', '.join(unknown)}: choose from "
                               f"{', '.join(RUNTIME_LIMITS)}")
        for name in LOWERABLE:
            if name in runtime and runtime[name] > build[name]:
                raise InvalidInput(f"{name} {runtime[name]} exceeds the engine's built {name} {build[name]}")
        return cls(**{**{name: build[name] for name in BUILD_LIMITS}, **runtime})
