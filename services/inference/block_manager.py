"""The paged KV cache's bookkeeping: a pool of fixed-size blocks of
`tokens_per_block` slots, handed to sequences as their K/V grow and taken
back the moment a sequence finishes or is aborted. Pure Python: the tensors
live in kv_cache.py, indexed by the block ids this hands out."""

from collections import deque
from dataclasses import dataclass

from dbrx_serve.shared.errors import CapacityExhausted, InvalidInput

from .sequence import Sequence


@dataclass(frozen=True)
class BlockStats:
    used: int
    free: int
    total: int


class BlockManager:
    def __init__(self, num_blocks: int, tokens_per_block: int):
        if num_blocks < 1 or tokens_per_block < 1:
            raise InvalidInput(f"a KV pool needs at least one block of at least one token, got "
                               f"{num_blocks} blocks of {tokens_per_block}")
        self.num_blocks, self.tokens_per_block = num_blocks, tokens_per_block
        self.free_ids: deque[int] = deque(range(num_blocks))

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.tokens_per_block)

    @property
    def num_free(self) -> int:
        return len(self.free_ids)

    def ensure(self, seq: Sequence, num_tokens: int) -> None:
        """Grow the sequence's block table to hold `num_tokens` tokens."""
        needed = self.blocks_for(num_tokens) - len(seq.block_table)
        if needed > self.num_free:
            raise CapacityExhausted(f"KV cache: {needed} blocks needed, {self.num_free} free")
        seq.block_table.extend(self.free_ids.popleft() for _ in range(max(needed, 0)))

    def free(self, seq: Sequence) -> None:
        self.free_ids.extend(seq.block_table)
        seq.block_table = []

    def stats(self) -> BlockStats:
        return BlockStats(used=self.num_blocks - self.num_free, free=self.num_free, total=self.num_blocks)
