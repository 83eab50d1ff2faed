"""A step as one plain value: what the model runner, the attention backends,
CUDA graphs and the other ranks of an MPI world (executor.py) read, never the
scheduler's `Sequence` objects.

A step's new tokens are flattened into one row of N tokens: each scheduled
chunk (a prefill chunk, or a decode row of one token) is a run of that row.
"""

from dataclasses import dataclass

import numpy as np

from .limits import EngineLimits
from .scheduler import Chunk


@dataclass(frozen=True, eq=False)
class StepPlan:
    token_ids: np.ndarray  # [N] int32
    positions: np.ndarray  # [N] int32, each token's position in its sequence
    slots: np.ndarray  # [N] int32, the cache slot its K/V go to (block * tokens_per_block + offset)
    query_start: np.ndarray  # [B+1] int32, where each sequence's run of new tokens starts in the row
    seq_lens: np.ndarray  # [B] int32, tokens in the cache once this step's are written
    block_tables: np.ndarray  # [B, W] int32, each sequence's blocks, padded with 0
    sample_rows: np.ndarray  # [S] int32, the rows (last token of a chunk that reaches its end) to sample

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens)

    @property
    def is_decode(self) -> bool:
        """One new token per sequence (what CUDA graphs capture)."""
        return self.num_tokens == self.num_seqs

    def sequences(self, first: int, stop: int) -> "StepPlan":
        """The part of the step that sequences [first, stop) make, as a step of its own."""
        start, end = int(self.query_start[first]), int(self.query_start[stop])
        rows = self.sample_rows[(self.sample_rows >= start) & (self.sample_rows < end)] - start
        return StepPlan(self.token_ids[start:end], self.positions[start:end], self.slots[start:end],
                        self.query_start[first:stop + 1] - start, self.seq_lens[first:stop],
                        self.block_tables[first:stop], rows.astype(np.int32))

    def pack(self) -> np.ndarray:
        """The plan as one int32 array (what rank 0 broadcasts to the other ranks each step)."""
        sizes = np.array([self.num_tokens, self.num_seqs, self.block_tables.shape[1], len(self.sample_rows)], np.int32)
        return np.concatenate([sizes, self.token_ids, self.positions, self.slots, self.query_start, self.seq_lens,
                               self.block_tables.ravel(), self.sample_rows]).astype(np.int32, copy=False)

    @classmethod
    def unpack(cls, packed: np.ndarray) -> "StepPlan":
        N, B, W, S = (int(n) for n in packed[:4])
        tokens, positions, slots, query_start, seq_lens, tables, rows = np.split(
            packed[4:4 + 3 * N + 2 * B + 1 + B * W + S], np.cumsum([N, N, N, B + 1, B, B * W]))
        return cls(tokens, positions, slots, query_start, seq_lens, tables.reshape(B, W), rows)

    @classmethod
    def of(cls, chunks: list[Chunk], tokens_per_block: int) -> "StepPlan":
        lengths = np.array([c.num_tokens for c in chunks], dtype=np.int32)
        starts = np.array([c.start for c in chunks], dtype=np.int32)
        query_start = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        positions = np.concatenate([np.arange(s, s + n, dtype=np.int32) for s, n in zip(starts, lengths)])
        tables = padded([c.seq.block_table for c in chunks])
        owner = np.repeat(np.arange(len(chunks)), lengths)
        slots = tables[owner, positions // tokens_per_block] * tokens_per_block + positions % tokens_per_block
        return cls(np.array([t for c in chunks for t in c.token_ids], dtype=np.int32), positions,
                   slots.astype(np.int32), query_start, starts + lengths, tables,
                   (query_start[1:] - 1)[[c.samples for c in chunks]].astype(np.int32))


def micro_batches(plan: StepPlan, count: int) -> list[StepPlan]:
    """The step cut into at most `count` steps of whole sequences, in order, of about equal numbers of
    tokens (pipeline stages work on one while the next stage works on the one before); their sampled
    rows, one after the other, are the step's."""
    count = min(count, plan.num_seqs)
    if count <= 1:
        return [plan]
    starts, cuts = plan.query_start, [0]
    for k in range(1, count):  # the sequence boundary nearest k/count of the tokens, each part non-empty
        target = k * plan.num_tokens / count
        after = int(np.searchsorted(starts, target))  # the first boundary at or past the target
        cut = after if starts[after] - target <= target - starts[after - 1] else after - 1
        cuts.append(min(max(cut, cuts[-1] + 1), plan.num_seqs - (count - k)))
    cuts.append(plan.num_seqs)
    return [plan.sequences(a, b) for a, b in zip(cuts, cuts[1:])]


def padded(tables: list[list[int]]) -> np.ndarray:
    """Block tables as one [B, W] array, W the longest, padded with 0."""
    out = np.zeros((len(tables), max(map(len, tables))), dtype=np.int32)
    for row, table in zip(out, tables):
        row[:len(table)] = table
    return out


def padded_decode(plan: StepPlan, batch_size: int) -> StepPlan:
    """A decode plan grown to `batch_size` rows (a CUDA graph's size): the extra rows have nothing
    cached (seq_len 0), no slot (-1: nothing written) and are sampled, then ignored."""
    extra = batch_size - plan.num_seqs
    rows = np.arange(batch_size + 1, dtype=np.int32)  # one token per row
    return StepPlan(np.pad(plan.token_ids, (0, extra)), np.pad(plan.positions, (0, extra)),
                    np.pad(plan.slots, (0, extra), constant_values=-1), rows, np.pad(plan.seq_lens, (0, extra)),
                    np.pad(plan.block_tables, ((0, extra), (0, 0))), rows[:-1])


def empty_decode(batch_size: int) -> StepPlan:
    """A decode step of rows with nothing cached and nothing written: what graphs capture on."""
    nothing = np.zeros(0, dtype=np.int32)
    return padded_decode(StepPlan(nothing, nothing, nothing, np.zeros(1, dtype=np.int32), nothing,
                                  np.zeros((0, 1), dtype=np.int32), nothing), batch_size)


def largest_step(limits: EngineLimits) -> StepPlan:
    """The step of the most tokens and the most sampled rows the limits allow at once, which the memory
    plan's profiling pass runs (memory.py): B = min(max_batch_size, max_num_tokens) prefills from position 0
    share N = min(max_num_tokens, B * max_input_len) tokens, and every one samples. All write into the
    same blocks 0..W-1 (W = block_tables.shape[1], what a cache for it needs): the values are thrown away."""
    num_seqs = min(limits.max_batch_size, limits.max_num_tokens)
    num_tokens = min(limits.max_num_tokens, num_seqs * limits.max_input_len)
    lengths = np.full(num_seqs, num_tokens // num_seqs, dtype=np.int32)
    lengths[:num_tokens % num_seqs] += 1
    query_start = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    positions = (np.arange(num_tokens) - np.repeat(query_start[:-1], lengths)).astype(np.int32)
    width = -(-int(lengths[0]) // limits.tokens_per_block)
    tables = np.tile(np.arange(width, dtype=np.int32), (num_seqs, 1))  # [B, W]: so each slot is its position
    return StepPlan(np.zeros(num_tokens, dtype=np.int32), positions, positions.copy(), query_start, lengths, tables,
                    query_start[1:] - 1)
