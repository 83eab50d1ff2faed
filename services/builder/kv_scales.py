"""The engine's KV-cache dtype and, for int8, its per-layer K and V scales.

Our checkpoints carry `kv_cache_scales.json` (finer: K after the clamp and
RoPE, V after the clamp). A TensorRT-LLM checkpoint has only its one
`kv_cache_scaling_factor` per layer (max |qkv| before the clamp / 127): a
valid, looser bound for both K and V, so the builder uses it for both.
"""

from safetensors import safe_open

from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.kv_scales import SCALES_FILE, KVScales

from .checkpoint import Checkpoint
from .layout import kv_scaling_names

def kv_cache_dtype(ckpt: Checkpoint, asked: str | None) -> str:
    """int8 when the checkpoint was calibrated (and nothing else was asked), else the model dtype."""
    if asked == "int8" and not ckpt.kv_int8:
        raise InvalidInput(f"kv_cache_dtype int8 needs KV-cache scales, and {ckpt.root} has none "
                           "(kv_cache_quant_algo is not INT8): convert with --int8_kv_cache")
    return asked or ("int8" if ckpt.kv_int8 else "model")


def kv_scales(ckpt: Checkpoint) -> KVScales:
    """The scales the engine gets: the checkpoint's own, else made from TensorRT-LLM's factors."""
    path = ckpt.root / SCALES_FILE
    return KVScales.read(path, ckpt.model.n_layers) if path.is_file() else scales_from_factors(ckpt)


def scales_from_factors(ckpt: Checkpoint) -> KVScales:
    """Per global layer {k, v} = the layer's kv_cache_scaling_factor, read from each pipeline stage."""
    layers = []
    for stage in range(ckpt.mapping.pp_size):
        rank = stage * ckpt.mapping.tp_size  # tp rank 0 of the stage: the factor is the same on every tp rank
        names = sorted(kv_scaling_names(ckpt.rank_layout(rank, engine=True)), key=_layer_index)
        missing = [n for n in names if n not in ckpt.headers[rank]]
        if missing:
            raise InvalidInput(f"{ckpt.root}: kv_cache_quant_algo is INT8 but there is no {SCALES_FILE} and "
                               f"{ckpt.rank_path(rank)} lacks {missing[0]}: convert with --int8_kv_cache again")
        with safe_open(ckpt.rank_path(rank), framework="pt") as f:
            layers += [float(f.get_tensor(n).reshape(-1)[0]) for n in names]
    factors = tuple(layers)
    return KVScales(factors, factors, {"dataset": "kv_cache_scaling_factor of the checkpoint"}, factors)


def _layer_index(name: str) -> int:
    return int(name.split(".")[2])
