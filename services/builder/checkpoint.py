"""Read and verify a TensorRT-LLM checkpoint before building from it.

- With `manifest.json` (ours): every file's size and sha256 must match.
- Without (TensorRT-LLM's own converter): config.json and every rank file
  must be there, each file as long as its header says.
- Every rank file must hold exactly the tensors of its rank (names, dtypes,
  shapes), read from the headers only.
- Quantized int8 tensors are accepted only in our plain layout
  (`dbrx_serve.weight_layout == "plain"`): TensorRT-LLM's are pre-shuffled
  for one GPU architecture. Float tensors with `quant_algo` set are the
  `--quantize_at_build` form: the builder quantizes them.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from dbrx_serve.shared.artifacts import MANIFEST, rank_file, read_json, verify_manifest
from dbrx_serve.shared.config import DTYPES, DbrxConfig
from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.mapping import Mapping
from dbrx_serve.shared.quantization import WeightOnly, scheme_of
from dbrx_serve.shared.reference import torch_dtype

from .layout import Layout, float_layout, kv_scaling_names, weight_only_layout
from dbrx_serve.shared.safetensors_header import TensorInfo, read_header

KV_CACHE_ALGOS = (None, "INT8")
FLOAT, WEIGHT_ONLY, QUANTIZE_AT_BUILD = "float", "weight_only", "quantize_at_build"


@dataclass(frozen=True)
class Checkpoint:
    root: Path
    config: dict  # config.json as written
    model: DbrxConfig
    mapping: Mapping
    dtype: torch.dtype
    form: str  # FLOAT, WEIGHT_ONLY (our plain int8 tensors) or QUANTIZE_AT_BUILD (float tensors + quant_algo)
    weight_only: WeightOnly | None  # the scheme of quantized checkpoints (quant_algo, group_size)
    manifest: dict | None
    headers: tuple[dict[str, TensorInfo], ...]  # per rank

    @property
    def kv_int8(self) -> bool:
        return (self.config.get("quantization") or {}).get("kv_cache_quant_algo") == "INT8"

    def rank_path(self, rank: int) -> Path:
        return rank_path(self.root, rank)

    def rank_layout(self, rank: int, engine: bool) -> Layout:
        """The tensors of a rank: float, or weight-only for quantized models, as the engine's rank file holds
        them (`engine`: int4 in tiles) or a weight-only checkpoint's."""
        layout = float_layout(self.model, self.mapping, rank, self.dtype)
        s = self.weight_only
        return layout if s is None else weight_only_layout(layout, s.precision, s.group_size, engine)


def rank_path(root: Path, rank: int) -> Path:
    return rank_file(root, rank)


def read_checkpoint(root: str | Path) -> Checkpoint:
    """Verify a checkpoint directory and describe it; InvalidInput naming what is wrong."""
    root = Path(root).absolute()
    if not root.is_dir():
        raise InvalidInput(f"checkpoint directory {root} does not exist")
    manifest = verify_manifest(root) if (root / MANIFEST).is_file() else None
    config = read_config(root)
    model, mapping = DbrxConfig.from_checkpoint_dict(config), checkpoint_mapping(root, config)
    mapping.check_fits(model)
    weight_only = quantization(root, config)
    headers = tuple(rank_header(root, r) for r in range(mapping.world_size))
    form = checkpoint_form(root, config, weight_only, headers[0])
    ckpt = Checkpoint(root, config, model, mapping, torch_dtype(config["dtype"]), form, weight_only, manifest, headers)
    for rank in range(mapping.world_size):
        check_rank(ckpt, rank)
    return ckpt


def read_config(root: Path) -> dict:
    path = root / "config.json"
    config = read_json(path, missing=f"{root} is not a TensorRT-LLM checkpoint")
    if config.get("dtype") not in DTYPES:
        raise InvalidInput(f"{path}: dtype {config.get('dtype')!r} is not one of {', '.join(DTYPES)}")
    return config


def checkpoint_mapping(root: Path, config: dict) -> Mapping:
    m = config.get("mapping") or {}
    mapping = Mapping.from_config(m)
    if m.get("world_size", mapping.world_size) != mapping.world_size:
        raise InvalidInput(f"{root / 'config.json'}: mapping.world_size {m['world_size']} is not "
                           f"tp_size x pp_size = {mapping.world_size}")
    return mapping


def quantization(root: Path, config: dict) -> WeightOnly | None:
    """The weight-only scheme of quant_algo and group_size (None for float); other algorithms are refused."""
    quant = config.get("quantization") or {}
    kv_algo = quant.get("kv_cache_quant_algo")
    if kv_algo not in KV_CACHE_ALGOS:
        raise InvalidInput(f"{root / 'config.json'}: kv_cache_quant_algo {kv_algo!r} is not supported "
                           "(null or 'INT8')")
    try:
        return scheme_of(quant)
    except InvalidInput as err:
        raise InvalidInput(f"{root / 'config.json'}: {err}") from None


def rank_header(root: Path, rank: int) -> dict[str, TensorInfo]:
    path = rank_path(root, rank)
    if not path.is_file():
        raise InvalidInput(f"{path} is missing: the checkpoint's mapping has rank {rank}; convert it again")
    return read_header(path)


def checkpoint_form(root: Path, config: dict, weight_only: WeightOnly | None, header: dict[str, TensorInfo]) -> str:
    """Float; our plain weight-only tensors; or float tensors for the builder to quantize."""
    if weight_only is None:
        return FLOAT
    qkv = header.get("transformer.layers.0.attention.qkv.weight")
    if qkv is not None and qkv.dtype.is_floating_point:
        return QUANTIZE_AT_BUILD
    if (config.get("dbrx_serve") or {}).get("weight_layout") != "plain":
        raise InvalidInput(
            f"{root}: this {config['quantization']['quant_algo']} checkpoint has no dbrx_serve.weight_layout "
            "'plain', so it was written by TensorRT-LLM, whose int8 weights are pre-shuffled for one GPU "
            "architecture and cannot be read back: convert from the HF model (dbrx convert --use_weight_only) "
            "or from a float checkpoint (dbrx convert --use_weight_only --quantize_at_build) instead")
    return WEIGHT_ONLY


def stored_layout(ckpt: Checkpoint, rank: int) -> Layout:
    """What the checkpoint's rank file must hold: the float layout for quantize-at-build, else the
    weight-only checkpoint's (the engine's but for int4, which the engine holds in tiles)."""
    if ckpt.form == QUANTIZE_AT_BUILD:
        return float_layout(ckpt.model, ckpt.mapping, rank, ckpt.dtype)
    return ckpt.rank_layout(rank, engine=False)


def check_rank(ckpt: Checkpoint, rank: int) -> None:
    """Every expected tensor present with its dtype and shape; nothing else but KV scaling factors."""
    path, header, expected = ckpt.rank_path(rank), ckpt.headers[rank], stored_layout(ckpt, rank)
    for name, (dtype, shape) in expected.items():
        if name not in header:
            raise InvalidInput(f"{path}: tensor {name} is missing")
        info = header[name]
        if info.dtype != dtype or info.shape != shape:
            raise InvalidInput(f"{path}: tensor {name} is {_describe(info.dtype, info.shape)}, expected "
                               f"{_describe(dtype, shape)} for this rank of the checkpoint's config")
    for name in sorted(set(header) - set(expected) - kv_scaling_names(expected)):
        raise InvalidInput(f"{path}: unexpected tensor {name} (not part of rank {rank} of this model)")


def _describe(dtype: torch.dtype, shape: tuple[int, ...]) -> str:
    return f"{str(dtype).removeprefix('torch.')} {list(shape)}"
