"""An engine directory as the runtime reads it (the builder writes it):
config.json = {version, pretrained_config, build_config}, rank{r}.safetensors,
tokenizer/, kv_cache_scales.json (int8 KV) and manifest.json, checked first.

The check is quick by default (sizes, small files' sha256, each rank file's
safetensors header against its size), so a large engine starts in seconds;
`verify_checksums` hashes every byte, as a build's input is checked."""

from dataclasses import dataclass
from pathlib import Path

from dbrx_serve.shared.artifacts import MANIFEST, file_sha256, rank_file, read_json, verify_manifest
from dbrx_serve.shared.config import DbrxConfig
from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.kv_scales import SCALES_FILE, KVScales
from dbrx_serve.shared.mapping import Mapping
from dbrx_serve.shared.quantization import WeightOnly, scheme_of
from dbrx_serve.shared.weight_only import weight_layout

BACKEND = "dbrx-serve-torch"
KV_CACHE_DTYPES = ("model", "int8")
TOKENIZER_DIR = "tokenizer"


@dataclass(frozen=True)
class EngineDir:
    path: Path
    config: DbrxConfig
    pretrained: dict
    build: dict
    kv_scales: KVScales | None
    tokenizer_override: Path | None = None  # a --tokenizer_dir given in place of the engine's tokenizer/

    @property
    def quant_algo(self) -> str | None:
        return (self.pretrained.get("quantization") or {}).get("quant_algo")

    @property
    def weight_only(self) -> WeightOnly | None:
        """The weight-only scheme of the checkpoint's `quantization` (quant_algo, group_size), or None."""
        return scheme_of(self.pretrained.get("quantization"))

    @property
    def kv_cache_quant_algo(self) -> str | None:
        return (self.pretrained.get("quantization") or {}).get("kv_cache_quant_algo")

    @property
    def dummy_weights(self) -> bool:
        """No rank files: each rank makes its weights on its device (dummy_weights.py)."""
        return bool(self.build.get("dummy_weights", False))

    @property
    def mapping(self) -> Mapping:
        return Mapping.from_config(self.pretrained.get("mapping") or {})

    @property
    def world_size(self) -> int:
        return self.mapping.world_size

    def rank_file(self, rank: int) -> Path:
        return rank_file(self.path, rank)

    @property
    def weight_bytes(self) -> int:
        return sum(self.rank_file(r).stat().st_size for r in range(self.world_size) if self.rank_file(r).is_file())

    @property
    def manifest_sha256(self) -> str:
        return file_sha256(self.path / MANIFEST) if (self.path / MANIFEST).is_file() else ""

    @property
    def tokenizer_dir(self) -> Path | None:
        if self.tokenizer_override is not None:
            return self.tokenizer_override
        path = self.path / TOKENIZER_DIR
        return path if path.is_dir() else None


def load_engine_dir(path: str | Path, verify: bool = True, verify_checksums: bool = False,
                    tokenizer_dir: str | Path | None = None) -> EngineDir:
    """Read (and, by default, check against its manifest) an engine directory; a
    `tokenizer_dir` replaces the engine's own tokenizer/ (or stands in for a missing one)."""
    path = Path(path)
    if not path.is_dir():
        raise InvalidInput(f"engine directory {path} does not exist")
    if verify:
        verify_manifest(path, checksums=verify_checksums)
    config = read_json(path / "config.json", missing=f"is {path} an engine directory (dbrx build)?")
    pretrained, build = config.get("pretrained_config"), config.get("build_config")
    if not isinstance(pretrained, dict) or not isinstance(build, dict):
        raise InvalidInput(f"{path / 'config.json'} needs pretrained_config and build_config objects")
    check_build(build, path, scheme_of(pretrained.get("quantization")))
    model = DbrxConfig.from_checkpoint_dict(pretrained)
    scales = KVScales.read(path / SCALES_FILE, model.n_layers) if build.get("kv_cache_dtype") == "int8" else None
    return EngineDir(path, model, pretrained, build, scales, checked_tokenizer_dir(tokenizer_dir))


def checked_tokenizer_dir(tokenizer_dir: str | Path | None) -> Path | None:
    if tokenizer_dir is not None and not Path(tokenizer_dir).is_dir():
        raise InvalidInput(f"--tokenizer_dir {tokenizer_dir} is not a directory")
    return Path(tokenizer_dir) if tokenizer_dir is not None else None


def check_build(build: dict, path: Path, weight_only: WeightOnly | None) -> None:
    backend = build.get("backend", BACKEND)
    if backend != BACKEND:
        raise InvalidInput(f"{path} was built for backend {backend!r}; this runtime runs {BACKEND!r}")
    layout, expected = build.get("weight_layout", "plain"), weight_layout(weight_only and weight_only.precision)
    if layout != expected:  # e.g. an int4 engine of an earlier version, with int4 two columns a byte
        raise InvalidInput(f"{path}: weight_layout {layout!r}, where this runtime reads {expected!r} for this "
                           "model's weights: build the engine again with this version")
    kv = build.get("kv_cache_dtype", "model")
    if kv not in KV_CACHE_DTYPES:
        raise InvalidInput(f"{path}: kv_cache_dtype {kv!r} is not one of {', '.join(KV_CACHE_DTYPES)}")
