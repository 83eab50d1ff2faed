"""Tensor, expert and pipeline parallelism, applied to one rank's model from outside (as gpt-fast's
tp.py does): the model stays the plain math of shared/model.py, which says where its outputs are
partial sums.

- Each block's `attention.dense` output (heads split over the tensor-parallel ranks) and MoE output
  (experts and their FFN columns split over the same ranks) are all-reduced over the rank's
  tensor-parallel group, by forward hooks: whatever module class a backend swapped in gets them.
- `lm_head`'s rows (ceil(V/t) per rank, zeros past V) are all-gathered and cut back to V rows.
- A later pipeline stage's `vocab_embedding` is a module that receives the previous stage's hidden
  states; an earlier stage's head sends its hidden states on instead of computing logits.
- `step`: a rank's share of a step: its micro-batches in order (stage k works on one while stage
  k+1 works on the one before), then the last stage's first rank sends rank 0 the logits.

`ONE_RANK` is the whole model in one process: no hooks, no sends, the model runner's own step.
"""

import torch
import torch.distributed as dist
from torch import nn

from dbrx_serve.shared.mapping import Mapping
from dbrx_serve.shared.model import DbrxModel
from dbrx_serve.shared.reference import torch_dtype

from .plan import StepPlan, micro_batches


def logits_head(model: DbrxModel, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x [1,N,H] -> float32 logits [S,V] of the sampled rows."""
    return model.lm_head(model.transformer.ln_f(x[0, rows])).float()


class OneRank:
    """The whole model in this process."""

    rank = 0
    graphs = True  # decode steps may be captured in CUDA graphs
    head = staticmethod(logits_head)

    def apply(self, model: DbrxModel) -> DbrxModel:
        return model

    def agree(self, count: int) -> int:
        """A count the same on every rank: alone, this rank's."""
        return count

    def step(self, runner, plan: StepPlan) -> torch.Tensor | None:
        return runner.run(plan)


ONE_RANK = OneRank()


class ReceiveHidden(nn.Module):
    """A later pipeline stage's embedding: the previous stage's hidden states for these tokens."""

    def __init__(self, source: int, d_model: int, dtype: torch.dtype):
        super().__init__()
        self.source, self.d_model, self.dtype = source, d_model, dtype

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [1,N] -> [1,N,H]
        x = torch.empty(*tokens.shape, self.d_model, dtype=self.dtype, device=tokens.device)
        dist.recv(x, src=self.source)
        return x


def all_reduce_output(group):
    def hook(module, inputs, output):
        dist.all_reduce(output, group=group)
        return output
    return hook


def gather_vocab(group, tp_size: int, vocab_size: int):
    def hook(module, inputs, output):  # [S,V/t] on each rank -> [S,V]
        parts = [torch.empty_like(output) for _ in range(tp_size)]
        dist.all_gather(parts, output.contiguous(), group=group)
        return torch.cat(parts, dim=-1)[..., :vocab_size]
    return hook


class RankOfWorld(OneRank):
    """Rank `rank`'s share of the model in an MPI world (world.py) under `mapping`."""

    def __init__(self, world, mapping: Mapping):
        self.world, self.mapping, self.rank = world, mapping, world.rank
        self.vocab_size = 0  # known once the model is applied
        self.tp_group = world.tp_group(mapping) if mapping.tp_size > 1 else None
        t, pp_rank = mapping.tp_size, mapping.pp_rank(self.rank)
        self.previous = self.rank - t if pp_rank > 0 else None
        self.next = self.rank + t if pp_rank < mapping.pp_size - 1 else None
        self.last_stage_first_rank = (mapping.pp_size - 1) * t
        self.graphs = mapping.pp_size == 1  # NCCL all-reduces may be captured; stage-to-stage sends are not
        self.sends: list = []
        self.agreements = 0  # opening an engine agrees twice (model_runner.py): weights loaded, then KV blocks

    def apply(self, model: DbrxModel) -> DbrxModel:
        cfg = model.cfg
        self.vocab_size = cfg.vocab_size
        if self.tp_group is not None:
            for block in model.transformer.layers:
                block.attention.dense.register_forward_hook(all_reduce_output(self.tp_group))
                block.mlp.register_forward_hook(all_reduce_output(self.tp_group))
        if model.shape.has_lm_head and self.tp_group is not None:
            model.lm_head.register_forward_hook(gather_vocab(self.tp_group, self.mapping.tp_size, cfg.vocab_size))
        if self.previous is not None:
            model.transformer.vocab_embedding = ReceiveHidden(self.previous, cfg.d_model, torch_dtype(cfg.torch_dtype))
        return model

    def agree(self, count: int | None, error: BaseException | None = None) -> int:
        """A count the same on every rank (the fewest any rank gives), or InvalidInput on every rank when
        one of them gives an error instead."""
        self.agreements += 1
        return self.world.agree(count, error)

    def head(self, model: DbrxModel, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor | None:
        """The last stage's logits; an earlier stage sends its hidden states on (x [1,N,H])."""
        if self.next is None:
            return logits_head(model, x, rows)
        self.sends.append((dist.isend(x, dst=self.next), x))
        return None

    def step(self, runner, plan: StepPlan) -> torch.Tensor | None:
        """This rank's share of a step; rank 0 gets the logits of the sampled rows [S,V]."""
        outputs = [runner.run(part) for part in micro_batches(plan, self.mapping.pp_size)]
        for work, _ in self.sends:
            work.wait()
        self.sends.clear()
        num_samples = len(plan.sample_rows)
        if self.rank == self.last_stage_first_rank:
            logits = torch.cat(outputs)
            if self.rank == 0:
                return logits
            if num_samples:
                dist.send(logits.contiguous(), dst=0)
        elif self.rank == 0:
            logits = torch.empty(num_samples, self.vocab_size, dtype=torch.float32, device=runner.device)
            if num_samples:
                dist.recv(logits, src=self.last_stage_first_rank)
            return logits
        return None
