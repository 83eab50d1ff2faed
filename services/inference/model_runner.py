"""The only place that touches device memory: loads a rank file into DbrxModel
(weight-only engines get their GEMM modules swapped first), owns the paged KV
cache, and runs a step -- prefill chunks and decode rows flattened into one
row of tokens -- returning the logits of each chunk's last token."""

import torch
from safetensors.torch import load_file

from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.model import DbrxModel, rotary
from dbrx_serve.shared.reference import torch_dtype
from dbrx_serve.shared.weight_only import precision_of, swap_weight_only

from .engine_dir import EngineDir
from .kv_cache import PagedKVCache
from .limits import EngineLimits
from .scheduler import Chunk

CPU_KV_CACHE_BYTES = 1 << 30  # the pool's memory on the CPU when num_kv_blocks is not given
GPU_FREE_MEMORY_FRACTION = 0.9
TRTLLM_ONLY_SUFFIXES = (".kv_cache_scaling_factor",)  # TensorRT-LLM's; ours come from kv_cache_scales.json


def rank_state(engine: EngineDir, rank: int = 0, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A rank file's tensors, read straight onto `device`: no host copy of a GPU's weights, and on the
    CPU memory of the process's own (safetensors maps the file lazily: the first requests would read it)."""
    path = engine.rank_file(rank)
    if not path.is_file():
        raise InvalidInput(f"{path} not found: the engine has no weights for rank {rank}")
    return {k: v.clone() if v.device.type == "cpu" else v for k, v in load_file(path, device=str(device)).items()
            if not k.endswith(TRTLLM_ONLY_SUFFIXES)}


def load_model(engine: EngineDir, device: str | torch.device = "cpu") -> DbrxModel:
    """The rank-0 model of a one-rank engine, weights as the engine stores them."""
    if engine.world_size != 1:
        raise InvalidInput(f"{engine.path} has {engine.world_size} ranks; this runtime runs one-rank engines")
    dtype = torch_dtype(engine.config.torch_dtype)
    with torch.device("meta"):
        model = DbrxModel(engine.config)
        if engine.quant_algo:
            swap_weight_only(model, precision_of(engine.quant_algo), dtype)
    state = rank_state(engine, 0, device)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise InvalidInput(f"{engine.rank_file(0)} does not match the model of its config.json: {err}") from None
    return model.eval()


def num_kv_blocks(limits: EngineLimits, bytes_per_block: int, device: torch.device) -> int:
    """As many blocks as the limits could use, capped by memory (free GPU memory on CUDA)."""
    if limits.num_kv_blocks is not None:
        return limits.num_kv_blocks
    wanted = limits.max_batch_size * limits.max_blocks_per_seq
    if device.type == "cuda":
        budget = int(torch.cuda.mem_get_info(device)[0] * GPU_FREE_MEMORY_FRACTION)
    else:
        budget = CPU_KV_CACHE_BYTES
    return max(1, min(wanted, budget // bytes_per_block))


class ModelRunner:
    def __init__(self, engine: EngineDir, limits: EngineLimits, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = load_model(engine, self.device)
        cfg, dtype = engine.config, torch_dtype(engine.config.torch_dtype)
        n_kv = self.model.shape.n_kv_heads
        element = 1 if engine.kv_scales else dtype.itemsize
        per_block = PagedKVCache.bytes_per_block(cfg.n_layers, limits.tokens_per_block, n_kv, cfg.head_dim, element)
        self.num_blocks = num_kv_blocks(limits, per_block, self.device)
        self.cache = PagedKVCache(cfg.n_layers, self.num_blocks, limits.tokens_per_block, n_kv, cfg.head_dim,
                                  dtype, self.device, engine.kv_scales)

    @torch.inference_mode()
    def run(self, chunks: list[Chunk]) -> torch.Tensor:
        """One step: logits [len(chunks), V] float32 at each chunk's last token."""
        tokens = torch.tensor([[t for c in chunks for t in c.token_ids]], device=self.device)  # [1,N]
        positions = torch.cat([torch.arange(c.start, c.start + c.num_tokens) for c in chunks])[None]  # [1,N]
        last = torch.tensor([c.num_tokens for c in chunks]).cumsum(0) - 1  # [B]
        self.cache.prepare(chunks)
        return self.logits_at(tokens, positions.to(self.device), last.to(self.device))

    def logits_at(self, tokens, positions, rows) -> torch.Tensor:
        """DbrxModel.forward over the paged cache, with the LM head on the wanted rows only."""
        m = self.model
        x = m.transformer.vocab_embedding(tokens)  # [1,N,H]
        cos, sin = rotary(positions, m.cfg.head_dim, m.cfg.rope_theta, x.dtype)
        for block in m.transformer.layers:
            x = block(x, cos, sin, positions, self.cache.attend)
        return m.lm_head(m.transformer.ln_f(x[0, rows])).float()  # [B,V]
