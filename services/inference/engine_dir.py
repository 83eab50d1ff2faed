"""An engine directory as the runtime reads it (the builder writes it):
config.json = {version, pretrained_config, build_config}, rank{r}.safetensors,
tokenizer/, kv_cache_scales.json (int8 KV) and manifest.json, verified first."""

import json
from dataclasses import dataclass
from pathlib import Path

from dbrx_serve.shared.artifacts import rank_file, verify_manifest
from dbrx_serve.shared.config import DbrxConfig
from dbrx_serve.shared.errors import InvalidInput

from .kv_cache import KVScales

BACKEND = "dbrx-serve-torch"
KV_CACHE_DTYPES = ("model", "int8")
WEIGHT_LAYOUTS = ("plain",)  # what the kernels read as stored (docs/trtllm-checkpoint.md)


@dataclass(frozen=True)
class EngineDir:
    path: Path
    config: DbrxConfig
    pretrained: dict
    build: dict
    kv_scales: KVScales | None

    @property
    def quant_algo(self) -> str | None:
        return (self.pretrained.get("quantization") or {}).get("quant_algo")

    @property
    def world_size(self) -> int:
        return (self.pretrained.get("mapping") or {}).get("world_size", 1)

    def rank_file(self, rank: int) -> Path:
        return rank_file(self.path, rank)

    @property
    def tokenizer_dir(self) -> Path | None:
        path = self.path / "tokenizer"
        return path if path.is_dir() else None


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise InvalidInput(f"{path} not found: is {path.parent} an engine directory (dbrx build)?")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidInput(f"{path} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{path} should hold a JSON object")
    return value


def load_engine_dir(path: str | Path, verify: bool = True) -> EngineDir:
    """Read (and, by default, verify against its manifest) an engine directory."""
    path = Path(path)
    if not path.is_dir():
        raise InvalidInput(f"engine directory {path} does not exist")
    if verify:
        verify_manifest(path)
    config = read_json(path / "config.json")
    pretrained, build = config.get("pretrained_config"), config.get("build_config")
    if not isinstance(pretrained, dict) or not isinstance(build, dict):
        raise InvalidInput(f"{path / 'config.json'} needs pretrained_config and build_config objects")
    check_build(build, path)
    scales = read_kv_scales(path, DbrxConfig.from_checkpoint_dict(pretrained).n_layers) \
        if build.get("kv_cache_dtype") == "int8" else None
    return EngineDir(path, DbrxConfig.from_checkpoint_dict(pretrained), pretrained, build, scales)


def check_build(build: dict, path: Path) -> None:
    backend = build.get("backend", BACKEND)
    if backend != BACKEND:
        raise InvalidInput(f"{path} was built for backend {backend!r}; this runtime runs {BACKEND!r}")
    layout = build.get("weight_layout", "plain")
    if layout not in WEIGHT_LAYOUTS:
        raise InvalidInput(f"{path}: weight_layout {layout!r} is not one this runtime reads "
                           f"({', '.join(WEIGHT_LAYOUTS)}): build the engine again with this version")
    kv = build.get("kv_cache_dtype", "model")
    if kv not in KV_CACHE_DTYPES:
        raise InvalidInput(f"{path}: kv_cache_dtype {kv!r} is not one of {', '.join(KV_CACHE_DTYPES)}")


def read_kv_scales(path: Path, num_layers: int) -> KVScales:
    layers = read_json(path / "kv_cache_scales.json").get("layers")
    if not isinstance(layers, list) or len(layers) != num_layers:
        raise InvalidInput(f"{path / 'kv_cache_scales.json'} should list K and V scales for each of "
                           f"{num_layers} layers")
    try:
        k, v = tuple(float(x["k"]) for x in layers), tuple(float(x["v"]) for x in layers)
    except (KeyError, TypeError, ValueError):
        raise InvalidInput(f"{path / 'kv_cache_scales.json'}: each layer needs numeric 'k' and 'v'") from None
    if min(k + v) <= 0:
        raise InvalidInput(f"{path / 'kv_cache_scales.json'}: KV scales must be positive")
    return KVScales(k, v)
