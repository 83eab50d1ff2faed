"""The int8 KV cache's scales: per global layer, one for K and one for V
(docs/trtllm-checkpoint.md, "INT8 KV cache"). The converter measures them,
the builder copies them into the engine (or makes them from TensorRT-LLM's
one factor per layer), the runtime quantizes with them; all three read and
check them here, so NaN, Inf, zero or a missing layer is refused everywhere.

    kv_cache_scales.json = {"calibration": {...where they came from...},
                            "layers": [{"k": sK, "v": sV}, ...]}
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

from .artifacts import read_json
from .errors import InvalidInput

SCALES_FILE = "kv_cache_scales.json"


@dataclass(frozen=True)
class KVScales:
    """`trtllm`: TensorRT-LLM's kv_cache_scaling_factor per layer, when known (not in the JSON)."""

    k: tuple[float, ...]
    v: tuple[float, ...]
    calibration: dict = field(default_factory=dict, compare=False)
    trtllm: tuple[float, ...] | None = None

    def __post_init__(self):
        if len(self.k) != len(self.v):
            raise InvalidInput(f"KV scales: {len(self.k)} K scales but {len(self.v)} V scales")
        for i, pair in enumerate(zip(self.k, self.v)):
            if not all(_positive_finite(s) for s in pair):
                raise InvalidInput(f"KV scales: layer {i} needs positive finite 'k' and 'v' scales, got {pair}")

    def of_layers(self, layers: range) -> "KVScales":
        """The scales of these global layers, indexed from 0: what one pipeline stage holds."""
        return KVScales(self.k[layers.start:layers.stop], self.v[layers.start:layers.stop], self.calibration,
                        self.trtllm[layers.start:layers.stop] if self.trtllm is not None else None)

    def to_json(self) -> dict:
        return {"calibration": self.calibration, "layers": [{"k": k, "v": v} for k, v in zip(self.k, self.v)]}

    @classmethod
    def from_json(cls, value: dict, num_layers: int, where: str | Path) -> "KVScales":
        layers = value.get("layers")
        if not isinstance(layers, list) or len(layers) != num_layers:
            raise InvalidInput(f"{where}: expected a 'layers' list of {num_layers} {{'k', 'v'}} entries")
        pairs = [(layer.get("k"), layer.get("v")) if isinstance(layer, dict) else (None, None) for layer in layers]
        try:
            return cls(tuple(k for k, _ in pairs), tuple(v for _, v in pairs), value.get("calibration") or {})
        except InvalidInput as error:
            raise InvalidInput(f"{where}: {error}") from None

    @classmethod
    def read(cls, path: Path, num_layers: int) -> "KVScales":
        return cls.from_json(read_json(path, missing="an int8 KV cache needs its scales"), num_layers, path)


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
