"""The only place that touches device memory: loads a rank file into DbrxModel
(weight-only engines get their GEMM modules swapped first, then the backend's
kernels), owns the paged KV cache and the step's device tensors, and runs a
step -- prefill chunks and decode rows flattened into one row of tokens --
returning the logits of the rows that sample. Decode steps of a CUDA backend
replay CUDA graphs (graphs.py)."""

import logging
import time

import torch
from safetensors.torch import load_file

from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.model import DbrxModel, rotary
from dbrx_serve.shared.reference import torch_dtype
from dbrx_serve.shared.weight_only import precision_of, swap_weight_only

from .backends import Backend, backend_for
from .engine_dir import EngineDir
from .graphs import CudaGraphs
from .kv_cache import PagedKVCache
from .limits import EngineLimits
from .plan import StepPlan
from .step_tensors import StepTensors

log = logging.getLogger("dbrx_serve.inference")

CPU_KV_CACHE_BYTES = 1 << 30  # the pool's memory on the CPU when num_kv_blocks is not given
GPU_FREE_MEMORY_FRACTION = 0.9
PREFILL_BLOCK_Q = 16  # query tokens per attention program outside decode steps
TRTLLM_ONLY_SUFFIXES = (".kv_cache_scaling_factor",)  # TensorRT-LLM's; ours come from kv_cache_scales.json


def rank_state(engine: EngineDir, rank: int = 0, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A rank file's tensors, read straight onto `device`: no host copy of a GPU's weights, and on the
    CPU memory of the process's own (safetensors maps the file lazily: the first requests would read it)."""
    path = engine.rank_file(rank)
    if not path.is_file():
        raise InvalidInput(f"{path} not found: the engine has no weights for rank {rank}")
    return {k: v.clone() if v.device.type == "cpu" else v for k, v in load_file(path, device=str(device)).items()
            if not k.endswith(TRTLLM_ONLY_SUFFIXES)}


def empty_model(engine: EngineDir, backend: Backend) -> DbrxModel:
    """The rank-0 model of a one-rank engine on the meta device, its modules swapped for the
    engine's weight-only scheme and the backend's kernels."""
    if engine.world_size != 1:
        raise InvalidInput(f"{engine.path} has {engine.world_size} ranks; this runtime runs one-rank engines")
    with torch.device("meta"):
        model = DbrxModel(engine.config)
        if engine.quant_algo:
            swap_weight_only(model, precision_of(engine.quant_algo), torch_dtype(engine.config.torch_dtype))
    return backend.swap(model)


def load_model(engine: EngineDir, device: torch.device, backend: Backend) -> DbrxModel:
    model = empty_model(engine, backend)
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
    def __init__(self, engine: EngineDir, limits: EngineLimits, device: str | torch.device = "cpu",
                 backend: str | None = None, model: DbrxModel | None = None):
        """`model`: weights already on the device (benchmarks), else the engine's rank file is loaded."""
        self.device = torch.device(device)
        self.backend = backend_for(backend, self.device)
        self.model = model if model is not None else load_model(engine, self.device, self.backend)
        cfg, shape, dtype = engine.config, self.model.shape, torch_dtype(engine.config.torch_dtype)
        element = 1 if engine.kv_scales else dtype.itemsize
        per_block = PagedKVCache.bytes_per_block(len(shape.layers), limits.tokens_per_block, shape.n_kv_heads,
                                                 cfg.head_dim, element)
        self.tensors = StepTensors(limits.max_num_tokens, limits.max_batch_size, limits.max_blocks_per_seq,
                                   self.device)
        self.num_blocks = num_kv_blocks(limits, per_block, self.device)
        self.cache = self.backend.make_cache(cfg, shape, self.num_blocks, limits.tokens_per_block, dtype,
                                             self.device, engine.kv_scales, self.tensors)
        self.graphs = None
        graph_batch = min(limits.max_graph_batch_size, limits.max_batch_size, limits.max_num_tokens)
        if self.backend.graphs and self.device.type == "cuda" and graph_batch > 0:
            started = time.perf_counter()
            self.graphs = CudaGraphs(self, graph_batch)
            log.info("captured decode CUDA graphs for batch sizes %s in %.1f s", self.graphs.sizes,
                     time.perf_counter() - started)

    @torch.inference_mode()
    def run(self, plan: StepPlan) -> torch.Tensor:
        """One step: logits [len(plan.sample_rows), V] float32, on the device."""
        if self.graphs is not None and self.graphs.covers(plan):
            return self.graphs.replay(plan)
        self.prepare(plan, self.cache.decode_block_q if plan.is_decode else PREFILL_BLOCK_Q)
        return self.forward(plan.num_tokens, len(plan.sample_rows))

    def prepare(self, plan: StepPlan, block_q: int) -> None:
        """The plan into the step tensors and the cache; `block_q`: query tokens per attention program."""
        self.cache.prepare(plan, self.tensors.load(plan, block_q), block_q)

    def forward(self, num_tokens: int, num_samples: int) -> torch.Tensor:
        """DbrxModel.forward over the paged cache on the step tensors, the LM head on sampled rows only."""
        m, t = self.model, self.tensors
        tokens, positions = t.token_ids[:num_tokens].long()[None], t.positions[:num_tokens].long()[None]  # [1,N]
        x = m.transformer.vocab_embedding(tokens)  # [1,N,H]
        cos, sin = rotary(positions, m.cfg.head_dim, m.cfg.rope_theta, x.dtype)
        for block in m.transformer.layers:
            x = block(x, cos, sin, positions, self.cache.attend)
        rows = t.sample_rows[:num_samples].long()
        return m.lm_head(m.transformer.ln_f(x[0, rows])).float()  # [S,V]
