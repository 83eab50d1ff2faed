"""The only place that touches device memory: loads a rank file into DbrxModel
(weight-only engines get their GEMM modules swapped first, then the backend's
kernels, then the rank's parallel wiring: parallel.py), owns the paged KV cache
(of the rank's own layers) and the step's device tensors, and runs a step --
prefill chunks and decode rows flattened into one row of tokens -- returning
the logits of the rows that sample (an earlier pipeline stage hands its hidden
states on instead). Decode steps of a CUDA backend replay CUDA graphs (graphs.py)."""

import logging
import time

import torch
from safetensors.torch import load_file
from torch.overrides import TorchFunctionMode

from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.model import DbrxModel, LocalShape, rotary
from dbrx_serve.shared.reference import torch_dtype
from dbrx_serve.shared.weight_only import swap_weight_only

from .backends import Backend, backend_for
from .dummy_weights import dummy_state
from .engine_dir import EngineDir
from .graphs import CudaGraphs
from .kv_cache import PagedKVCache
from .limits import EngineLimits
from .parallel import ONE_RANK, OneRank
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


class SkipRandomInit(TorchFunctionMode):
    """Modules made on the meta device without their random init (their weights come from the rank
    file): the meta device's `normal_` alone imports torch._dynamo, a second or more of CPU per process."""

    INIT = {torch.nn.init.normal_, torch.nn.init.uniform_, torch.nn.init.kaiming_uniform_, torch.Tensor.normal_,
            torch.Tensor.uniform_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.INIT:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def empty_model(engine: EngineDir, backend: Backend, rank: int = 0) -> DbrxModel:
    """A rank's share of the model on the meta device, its modules swapped for the engine's
    weight-only scheme and the backend's kernels."""
    with torch.device("meta"), SkipRandomInit():
        model = DbrxModel(engine.config, LocalShape.of(engine.config, engine.mapping, rank))
        if engine.weight_only is not None:
            swap_weight_only(model, engine.weight_only, torch_dtype(engine.config.torch_dtype))
    return backend.swap(model)


def load_model(engine: EngineDir, device: torch.device, backend: Backend, rank: int = 0) -> DbrxModel:
    model = empty_model(engine, backend, rank)
    if engine.dummy_weights:  # no converter checked this split of the model: check it here
        engine.mapping.check_fits(engine.config)
        state = dummy_state(model, torch_dtype(engine.config.torch_dtype), device)
    else:
        state = rank_state(engine, rank, device)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise InvalidInput(f"{engine.rank_file(rank)} does not match the model of its config.json: {err}") from None
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
                 backend: str | None = None, model: DbrxModel | None = None, parallel: OneRank = ONE_RANK):
        """`model`: weights already on the device (benchmarks), else the rank's file is loaded;
        `parallel`: the rank's share of a multi-rank engine (parallel.py)."""
        self.device = torch.device(device)
        self.backend = backend_for(backend, self.device)
        self.parallel = parallel
        model = model if model is not None else load_model(engine, self.device, self.backend, parallel.rank)
        self.model = parallel.apply(model)
        cfg, shape, dtype = engine.config, self.model.shape, torch_dtype(engine.config.torch_dtype)
        element = 1 if engine.kv_scales else dtype.itemsize
        per_block = PagedKVCache.bytes_per_block(len(shape.layers), limits.tokens_per_block, shape.n_kv_heads,
                                                 cfg.head_dim, element)
        self.tensors = StepTensors(limits.max_num_tokens, limits.max_batch_size, limits.max_blocks_per_seq,
                                   self.device)
        self.num_blocks = parallel.agree_blocks(num_kv_blocks(limits, per_block, self.device))
        scales = engine.kv_scales.of_layers(shape.layers) if engine.kv_scales else None  # this stage's layers
        self.cache = self.backend.make_cache(cfg, shape, self.num_blocks, limits.tokens_per_block, dtype,
                                             self.device, scales, self.tensors)
        self.graphs = None
        graph_batch = min(limits.max_graph_batch_size, limits.max_batch_size, limits.max_num_tokens)
        if self.backend.graphs and parallel.graphs and self.device.type == "cuda" and graph_batch > 0:
            started = time.perf_counter()
            self.graphs = CudaGraphs(self, graph_batch)
            log.info("captured decode CUDA graphs for batch sizes %s in %.1f s", self.graphs.sizes,
                     time.perf_counter() - started)

    @torch.inference_mode()
    def run(self, plan: StepPlan) -> torch.Tensor | None:
        """One step: logits [len(plan.sample_rows), V] float32, on the device (None on a pipeline
        stage before the last, which sends its hidden states on)."""
        if self.graphs is not None and self.graphs.covers(plan):
            return self.graphs.replay(plan)
        self.prepare(plan, self.cache.decode_block_q if plan.is_decode else PREFILL_BLOCK_Q)
        return self.forward(plan.num_tokens, len(plan.sample_rows))

    def prepare(self, plan: StepPlan, block_q: int) -> None:
        """The plan into the step tensors and the cache; `block_q`: query tokens per attention program."""
        self.cache.prepare(plan, self.tensors.load(plan, block_q), block_q)

    def forward(self, num_tokens: int, num_samples: int) -> torch.Tensor | None:
        """DbrxModel.forward over the paged cache on the step tensors, the LM head on sampled rows only."""
        m, t = self.model, self.tensors
        tokens, positions = t.token_ids[:num_tokens].long()[None], t.positions[:num_tokens].long()[None]  # [1,N]
        x = m.transformer.vocab_embedding(tokens)  # [1,N,H] (a later pipeline stage receives it: parallel.py)
        cos, sin = rotary(positions, m.cfg.head_dim, m.cfg.rope_theta, x.dtype)
        for block in m.transformer.layers:
            x = block(x, cos, sin, positions, self.cache.attend)
        return self.parallel.head(m, x, t.sample_rows[:num_samples].long())  # [S,V] (earlier stages: sent on)
