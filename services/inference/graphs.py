"""Decode steps as CUDA graphs: one graph per batch-size bucket, captured once
over the runner's step tensors and replayed with a step padded to its bucket.
A replay launches the whole forward pass (every layer's kernels) at once: no
per-kernel launch cost, no host sync, no allocation."""

import torch

from .plan import StepPlan, empty_decode, padded_decode

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class CudaGraphs:
    def __init__(self, runner, max_batch_size: int):
        self.runner = runner
        self.sizes = [b for b in BUCKETS if b <= max_batch_size]
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        pool = None
        for size in reversed(self.sizes):  # largest first: the smaller ones reuse its memory
            pool = self.capture(size, pool)

    def capture(self, size: int, pool):
        empty = empty_decode(size)
        self.runner.prepare(empty, self.runner.cache.decode_block_q)
        self.runner.forward(size, size)  # compiles the kernels outside the capture
        torch.cuda.synchronize(self.runner.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            self.logits[size] = self.runner.forward(size, size)
        self.graphs[size] = graph
        return graph.pool()

    def covers(self, plan: StepPlan) -> bool:
        return plan.is_decode and plan.num_seqs <= self.sizes[-1]

    def replay(self, plan: StepPlan, feed: torch.Tensor | None = None) -> torch.Tensor:
        """The plan's logits [B, V]: a view of the graph's output, valid until the next replay (whose
        kernels run after the work already queued on it). `feed`: ModelRunner.run's."""
        size = next(s for s in self.sizes if s >= plan.num_seqs)
        self.runner.prepare(padded_decode(plan, size), self.runner.cache.decode_block_q, feed)
        self.graphs[size].replay()
        return self.logits[size][:plan.num_seqs]
