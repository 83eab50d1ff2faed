"""The only place that touches device memory: loads a rank file into DbrxModel
(weight-only engines get their GEMM modules swapped first, then the backend's
kernels, then the rank's parallel wiring: parallel.py), owns the paged KV cache
(of the rank's own layers) and the step's device tensors, and runs a step --
prefill chunks and decode rows flattened into one row of tokens -- returning
the logits of the rows that sample (an earlier pipeline stage hands its hidden
states on instead). Decode steps of a CUDA backend replay CUDA graphs (graphs.py).
The pool's size is the memory plan's (memory.py), made once the weights are loaded."""

import logging
import time
from dataclasses import replace
from typing import Callable

import torch
from safetensors.torch import load_file
from torch.overrides import TorchFunctionMode

from dbrx_serve.shared.config import DbrxConfig
from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.mapping import Mapping
from dbrx_serve.shared.model import DbrxModel, LocalShape, rotary, run_blocks
from dbrx_serve.shared.quantization import WeightOnly
from dbrx_serve.shared.reference import torch_dtype
from dbrx_serve.shared.weight_only import swap_weight_only

from .backends import Backend, backend_for
from .dummy_weights import dummy_state
from .engine_dir import EngineDir
from .graphs import CudaGraphs
from .kv_cache import PagedKVCache
from .limits import EngineLimits
from .memory import plan_memory
from .parallel import ONE_RANK, OneRank
from .plan import StepPlan
from .step_tensors import StepTensors

log = logging.getLogger("dbrx_serve.inference")

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


def empty_model(config: DbrxConfig, mapping: Mapping, weight_only: WeightOnly | None, backend: Backend,
                rank: int = 0) -> DbrxModel:
    """A rank's share of the model on the meta device, its modules swapped for the weight-only
    scheme and the backend's kernels (an engine's, or a checkpoint's that the builder tunes for)."""
    with torch.device("meta"), SkipRandomInit():
        model = DbrxModel(config, LocalShape.of(config, mapping, rank))
        if weight_only is not None:
            swap_weight_only(model, weight_only, torch_dtype(config.torch_dtype))
    return backend.swap(model)


def load_model(engine: EngineDir, device: torch.device, backend: Backend, rank: int = 0) -> DbrxModel:
    model = empty_model(engine.config, engine.mapping, engine.weight_only, backend, rank)
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


class ModelRunner:
    def __init__(self, engine: EngineDir, limits: EngineLimits, device: str | torch.device = "cpu",
                 backend: str | None = None, model: DbrxModel | None = None, parallel: OneRank = ONE_RANK,
                 sample: Callable[[torch.Tensor], None] | None = None):
        """`model`: weights already on the device (benchmarks), else the rank's file is loaded;
        `parallel`: the rank's share of a multi-rank engine (parallel.py); `sample(logits)`: the
        sampler's costliest work, which the memory plan's profiling pass runs (rank 0's)."""
        self.device = torch.device(device)
        self.backend = backend_for(backend, self.device)
        self.parallel, self.engine, self.limits = parallel, engine, limits
        self.backend.install_tuning(engine.build.get("kernel_tuning", {}), self.device)
        model = model if model is not None else load_model(engine, self.device, self.backend, parallel.rank)
        self.model = parallel.apply(model)
        self.tensors = StepTensors(limits.max_num_tokens, limits.max_batch_size, limits.max_blocks_per_seq,
                                   self.device)
        self.cache, self.graphs = None, None
        parallel.agree(1)  # every rank has its weights: the profiling pass's collectives may start
        plan = plan_memory(self, sample)
        self.memory = replace(plan, num_blocks=parallel.agree(plan.num_blocks))  # the fewest of any rank
        self.memory.check_holds_one_sequence()  # the same answer on every rank
        self.cache = self.new_cache(self.memory.num_blocks)
        self.graphs = self.capture_graphs()

    @property
    def bytes_per_block(self) -> int:
        cfg, shape = self.engine.config, self.model.shape
        element = 1 if self.engine.kv_scales else torch_dtype(cfg.torch_dtype).itemsize
        return PagedKVCache.bytes_per_block(len(shape.layers), self.limits.tokens_per_block, shape.n_kv_heads,
                                            cfg.head_dim, element)

    def new_cache(self, num_blocks: int):
        """The backend's paged cache of `num_blocks` blocks for this rank's layers (and their int8 KV scales)."""
        engine, shape = self.engine, self.model.shape
        scales = engine.kv_scales.of_layers(shape.layers) if engine.kv_scales else None  # this stage's layers
        return self.backend.make_cache(engine.config, shape, num_blocks, self.limits.tokens_per_block,
                                       torch_dtype(engine.config.torch_dtype), self.device, scales, self.tensors)

    def capture_graphs(self) -> CudaGraphs | None:
        """Decode CUDA graphs over the current cache, where the backend, the ranks' layout and the device
        allow them; None elsewhere."""
        limits = self.limits
        size = min(limits.max_graph_batch_size, limits.max_batch_size, limits.max_num_tokens)
        if not (self.backend.graphs and self.parallel.graphs and self.device.type == "cuda" and size > 0):
            return None
        started = time.perf_counter()
        graphs = CudaGraphs(self, size)
        log.info("captured decode CUDA graphs for batch sizes %s in %.1f s", graphs.sizes,
                 time.perf_counter() - started)
        return graphs

    @torch.inference_mode()
    def run(self, plan: StepPlan, feed: torch.Tensor | None = None) -> torch.Tensor | None:
        """One step: logits [len(plan.sample_rows), V] float32, on the device (None on a pipeline
        stage before the last, which sends its hidden states on). `feed`: the input ids of the plan's
        first len(feed) tokens, on the device (the tokens the step before sampled), in place of the plan's."""
        if self.graphs is not None and self.graphs.covers(plan):
            return self.graphs.replay(plan, feed)
        self.prepare(plan, self.cache.decode_block_q if plan.is_decode else PREFILL_BLOCK_Q, feed)
        return self.forward(plan.num_tokens, len(plan.sample_rows))

    def prepare(self, plan: StepPlan, block_q: int, feed: torch.Tensor | None = None) -> None:
        """The plan into the step tensors and the cache; `block_q`: query tokens per attention program;
        `feed`: run()'s."""
        self.cache.prepare(plan, self.tensors.load(plan, block_q), block_q)
        if feed is not None:
            self.tensors.token_ids[:len(feed)].copy_(feed)  # after the plan's copy, in stream order

    def forward(self, num_tokens: int, num_samples: int) -> torch.Tensor | None:
        """DbrxModel.forward over the paged cache on the step tensors, the LM head on sampled rows only."""
        m, t = self.model, self.tensors
        tokens, positions = t.token_ids[:num_tokens].long()[None], t.positions[:num_tokens].long()[None]  # [1,N]
        x = m.transformer.vocab_embedding(tokens)  # [1,N,H] (a later pipeline stage receives it: parallel.py)
        cos, sin = rotary(positions, m.cfg.head_dim, m.cfg.rope_theta, x.dtype)
        x = run_blocks(m.transformer.layers, x, cos, sin, positions, self.cache.attend)
        return self.parallel.head(m, x, t.sample_rows[:num_samples].long())  # [S,V] (earlier stages: sent on)
