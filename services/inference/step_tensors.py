"""A StepPlan on the device, in buffers allocated once.

Every field has a fixed place in one int32 buffer, so a step costs one
host-to-device copy (from a pinned staging buffer) and CUDA graphs, captured
on these buffers, replay on whatever the next step writes into them. Two
staging buffers take turns, each rewritten only once its last copy is done: a
step may be staged while the one before is still queued (the engine's
lookahead). The attention kernel's program table (which sequence and first
token each program takes) is derived here from the plan's query starts.
"""

import numpy as np
import torch

from .plan import StepPlan

FIELDS = ("token_ids", "positions", "slots", "query_start", "seq_lens", "sample_rows",
          "program_seq", "program_start", "block_tables")  # block_tables last: copies stop where it ends


class StepTensors:
    def __init__(self, max_tokens: int, max_seqs: int, max_blocks_per_seq: int, device: torch.device):
        self.width = max_blocks_per_seq
        sizes = {"token_ids": max_tokens, "positions": max_tokens, "slots": max_tokens,
                 "query_start": max_seqs + 1, "seq_lens": max_seqs, "sample_rows": max_seqs,
                 "program_seq": max_tokens, "program_start": max_tokens, "block_tables": max_seqs * self.width}
        self.offsets = dict(zip(FIELDS, np.cumsum([0] + [sizes[f] for f in FIELDS])))
        total = int(self.offsets["block_tables"]) + sizes["block_tables"]
        pinned = device.type == "cuda"
        self.staging = [torch.zeros(total, dtype=torch.int32, pin_memory=pinned) for _ in range(2)]
        self.copied: list[torch.cuda.Event | None] = [None, None]  # after each staging buffer's last copy
        self.turn = 0
        self.device = torch.zeros(total, dtype=torch.int32, device=device)
        for name in FIELDS:
            setattr(self, name, self.device[self.offsets[name]:self.offsets[name] + sizes[name]])
        self.block_tables = self.block_tables.view(max_seqs, self.width)

    def load(self, plan: StepPlan, block_q: int) -> int:
        """Copy the plan in; returns the number of attention programs (blocks of block_q new tokens)."""
        program_seq, program_start = programs(plan.query_start, block_q)
        staging, turn = self.staging[self.turn], self.turn
        self.turn = 1 - turn
        if self.copied[turn] is not None:
            self.copied[turn].synchronize()  # its last copy has left it (in steady use, long since)
        host = staging.numpy()
        for name, value in (("token_ids", plan.token_ids), ("positions", plan.positions), ("slots", plan.slots),
                            ("query_start", plan.query_start), ("seq_lens", plan.seq_lens),
                            ("sample_rows", plan.sample_rows), ("program_seq", program_seq),
                            ("program_start", program_start)):
            host[self.offsets[name]:self.offsets[name] + len(value)] = value
        start = self.offsets["block_tables"]
        tables = host[start:start + plan.num_seqs * self.width].reshape(plan.num_seqs, self.width)
        tables[:, :plan.block_tables.shape[1]] = plan.block_tables
        used = start + plan.num_seqs * self.width
        self.device[:used].copy_(staging[:used], non_blocking=True)
        if self.device.is_cuda:
            self.copied[turn] = torch.cuda.Event()
            self.copied[turn].record()
        return len(program_seq)


def programs(query_start: np.ndarray, block_q: int) -> tuple[np.ndarray, np.ndarray]:
    """Each sequence's new tokens cut into blocks of block_q: (sequence, first token) per block."""
    lengths = np.diff(query_start)
    counts = -(-lengths // block_q)
    seq = np.repeat(np.arange(len(lengths), dtype=np.int32), counts)
    within = np.arange(counts.sum(), dtype=np.int32) - np.repeat(np.cumsum(counts) - counts, counts)
    return seq, (query_start[seq] + within * block_q).astype(np.int32)
