"""The memory plan of one rank's device: what the open engine holds besides its KV pool -- weights, the
peak of the largest step the limits allow (the sampler's work on its logits included), the CUDA graphs'
pools, and the rest the device holds (CUDA context, step tensors, communication buffers, other
processes) -- and the KV pool, which takes what the memory budget leaves, in whole blocks:

    budget = gpu_memory_fraction x the GPU's memory, or memory_budget_bytes (on the CPU, by default:
             the weights and a 1 GiB pool)
    blocks = (budget - weights - other - activations - graph pools) // bytes per block,
             at most what max_batch_size sequences of max_seq_len use; num_kv_blocks instead, when given

On CUDA, when the pool is to be sized, a profiling pass measures the activations and graph pools: one
step of plan.largest_step on a cache of the few blocks it writes into (and, on rank 0, the sampler's costliest
work on its logits), then the decode CUDA graphs captured on that cache; both are dropped before the
pool is made, and the graphs captured again over it (model_runner.py). The CPU has no allocator
statistics: nothing is measured there. The ranks of a world agree on the fewest blocks any rank holds;
a pool sized under a budget that cannot hold one sequence of max_seq_len is refused, with the numbers."""

import argparse
import gc
import itertools
from dataclasses import dataclass, replace

import torch

from dbrx_serve.shared.errors import InvalidInput

from .limits import EngineLimits
from .plan import StepPlan, largest_step

CPU_KV_CACHE_BYTES = 1 << 30  # the pool on the CPU when no memory budget is given


@dataclass(frozen=True)
class MemoryPlan:
    device: str
    limits: EngineLimits
    bytes_per_block: int  # kv_cache.PagedKVCache.bytes_per_block of this rank's layers
    weight_bytes: int
    num_blocks: int = 0
    budget_bytes: int | None = None  # None: the pool was given (num_kv_blocks), not sized
    budget_source: str = "num_kv_blocks given"
    activation_bytes: int = 0  # the largest step's peak above what the device held before it
    graph_pool_bytes: int = 0
    other_bytes: int = 0  # held on the device besides the weights: CUDA context, step tensors, NCCL, other processes
    measured: bool = False  # activations and graph pools come from a profiling pass (CUDA)

    @property
    def left_bytes(self) -> int:
        """What the budget leaves the KV pool (negative when it does not even hold the rest)."""
        held = self.weight_bytes + self.other_bytes + self.activation_bytes + self.graph_pool_bytes
        return (self.budget_bytes or 0) - held

    def sized(self, budget_bytes: int, source: str) -> "MemoryPlan":
        """The plan with the pool that `budget_bytes` leaves, capped at what the limits could use."""
        wanted = self.limits.max_batch_size * self.limits.max_blocks_per_seq
        plan = replace(self, budget_bytes=budget_bytes, budget_source=source)
        return replace(plan, num_blocks=min(wanted, max(0, plan.left_bytes // self.bytes_per_block)))

    @property
    def kv_bytes(self) -> int:
        return self.num_blocks * self.bytes_per_block

    @property
    def num_kv_tokens(self) -> int:
        return self.num_blocks * self.limits.tokens_per_block

    @property
    def tokens_at_max_batch(self) -> int:
        """Tokens of context each sequence can hold when max_batch_size sequences share the pool."""
        per_seq = self.num_blocks // self.limits.max_batch_size * self.limits.tokens_per_block
        return min(self.limits.max_seq_len, per_seq)

    @property
    def max_length_seqs(self) -> int:
        """How many sequences of max_seq_len the pool holds at once."""
        return self.num_blocks // self.limits.max_blocks_per_seq

    def describe(self) -> str:
        """The plan as `dbrx serve inference` and `dbrx run` print it."""
        budget = "none: num_kv_blocks given" if self.budget_bytes is None else \
            f"{size(self.budget_bytes)} ({self.budget_source})"
        measured = "" if self.measured else f" (not measured on {self.device})"
        limits = self.limits
        return (f"memory plan on {self.device}: budget {budget}\n"
                f"  weights {size(self.weight_bytes)}, activations {size(self.activation_bytes)}{measured}, "
                f"CUDA graph pools {size(self.graph_pool_bytes)}, other {size(self.other_bytes)}\n"
                f"  KV pool {size(self.kv_bytes)}: {self.num_blocks} blocks of {limits.tokens_per_block} tokens "
                f"({size(self.bytes_per_block)} each) = {self.num_kv_tokens} tokens of context\n"
                f"  at max batch {limits.max_batch_size}: {self.tokens_at_max_batch} tokens a sequence; one "
                f"sequence: {min(limits.max_seq_len, self.num_kv_tokens)} tokens (max_seq_len "
                f"{limits.max_seq_len}); {self.max_length_seqs} sequences of max_seq_len at once")

    def check_holds_one_sequence(self) -> None:
        """Refuse a pool sized under a budget that cannot hold one sequence of max_seq_len tokens."""
        needed = self.limits.max_blocks_per_seq
        if self.budget_bytes is None or self.num_blocks >= needed:
            return
        own = max(0, self.left_bytes // self.bytes_per_block)
        fewest = f"; another rank's budget leaves {self.num_blocks}" if own > self.num_blocks else ""
        budget = "--memory_budget_bytes" if self.device == "cpu" else "--gpu_memory_fraction or --memory_budget_bytes"
        raise InvalidInput(
            f"the engine cannot hold one sequence of max_seq_len {self.limits.max_seq_len} tokens on "
            f"{self.device}: that needs {needed} KV blocks ({size(needed * self.bytes_per_block)}), but the memory "
            f"budget {size(self.budget_bytes)} ({self.budget_source}) leaves {size(self.left_bytes)}, "
            f"{own} blocks, after weights {size(self.weight_bytes)}, activations {size(self.activation_bytes)}, "
            f"CUDA graph pools {size(self.graph_pool_bytes)} and other {size(self.other_bytes)}{fewest}: raise "
            f"{budget}, spread the model over more devices, or build the engine with a smaller max_seq_len")


def add_memory_args(parser: argparse.ArgumentParser) -> None:
    """`dbrx serve inference` and `dbrx run`'s flags: the budget the KV pool is sized under."""
    parser.add_argument("--gpu_memory_fraction", type=float, default=None, help="of each GPU's memory, what the "
                        "engine may hold in all: weights, activations, CUDA graphs, KV pool (default 0.9)")
    parser.add_argument("--memory_budget_bytes", type=int, default=None, help="in place of the fraction: the bytes "
                        "the engine may hold on each rank's device (the CPU's default: the weights and a 1 GiB pool)")


def plan_memory(runner, sample=None) -> MemoryPlan:
    """This rank's plan (before the ranks agree on blocks): the pool given, or sized under the budget
    after the profiling pass on CUDA. `sample(logits)`: the sampler's costliest work (rank 0 only)."""
    limits = runner.limits
    plan = MemoryPlan(str(runner.device), limits, runner.bytes_per_block, model_bytes(runner.model))
    if limits.num_kv_blocks is not None:
        return replace(plan, num_blocks=limits.num_kv_blocks)
    if runner.device.type != "cuda":
        if limits.memory_budget_bytes is not None:
            return plan.sized(limits.memory_budget_bytes, "--memory_budget_bytes")
        return plan.sized(plan.weight_bytes + CPU_KV_CACHE_BYTES, f"the weights and the CPU's default "
                          f"{size(CPU_KV_CACHE_BYTES)} pool; --memory_budget_bytes sets it")
    activations, graph_pools = profile(runner, limits, sample)
    free, total = torch.cuda.mem_get_info(runner.device)
    plan = replace(plan, activation_bytes=activations, graph_pool_bytes=graph_pools,
                   other_bytes=total - free - plan.weight_bytes, measured=True)
    if limits.memory_budget_bytes is not None:
        return plan.sized(limits.memory_budget_bytes, "--memory_budget_bytes")
    return plan.sized(int(total * limits.gpu_memory_fraction), f"{limits.gpu_memory_fraction} of {size(total)}")


def profile(runner, limits: EngineLimits, sample=None) -> tuple[int, int]:
    """The profiling pass on CUDA: (activations, graph pools) in bytes: what the largest step reserves at
    its peak above what the device held before it (its cache of a few blocks made first), then what
    capturing the decode CUDA graphs reserves. Reserved, not allocated, bytes: the allocator's rounding
    and fragmentation count."""
    device, step = runner.device, largest_step(limits)
    runner.cache = runner.new_cache(step.block_tables.shape[1])  # the few blocks the step writes into
    free_device_memory()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_reserved(device)
    run_profile_step(runner, step, sample)
    torch.cuda.synchronize(device)
    activations = torch.cuda.max_memory_reserved(device) - before
    free_device_memory()  # as torch.cuda.graph does when a capture starts: the pools are what comes after
    before = torch.cuda.memory_reserved(device)
    graphs = runner.capture_graphs()
    torch.cuda.synchronize(device)
    graph_pools = torch.cuda.memory_reserved(device) - before
    del graphs
    runner.cache = None
    free_device_memory()
    return activations, graph_pools


def run_profile_step(runner, step: StepPlan, sample=None) -> None:
    """`step` on every rank (each its share of it), and `sample` on its logits (rank 0)."""
    logits = runner.parallel.step(runner, step)
    if logits is not None and sample is not None:
        sample(logits)


def model_bytes(model: torch.nn.Module) -> int:
    """The bytes of a model's parameters and buffers, each tensor once."""
    tensors = {t.data_ptr(): t.nbytes for t in itertools.chain(model.parameters(), model.buffers())}
    return sum(tensors.values())


def free_device_memory() -> None:
    """Dropped objects' memory back to the device now (a runner and its CUDA graphs refer to each
    other: only the collector frees them), so that what comes next fits."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def size(num_bytes: int) -> str:
    """Bytes for a person: 1.23 GB (powers of 1000, as the load time's log line)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(num_bytes) >= scale:
            return f"{num_bytes / scale:.2f} {unit}"
    return f"{num_bytes} B"
