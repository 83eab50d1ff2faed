"""Which tokens run in the next step: continuous batching with chunked prefill.

Pure Python (no model): each `schedule()` spends a token budget of
`max_num_tokens`, first on running sequences' decode tokens, then on running
prefills, then on waiting requests, which join the running batch between
steps (FCFS), up to `max_batch_size`. A prompt longer than what is left of
the budget runs in chunks over several steps. A request is admitted only
when the KV blocks for its whole length (prompt + max_new_tokens) are
unreserved, so a running sequence never waits for memory and nothing is
preempted. Requests that can never run are refused when added. Requests
with a deadline sit in a heap too, so finding the expired ones costs no scan.
"""

import heapq
import itertools
from collections import deque
from dataclasses import dataclass

from dbrx_serve.shared.errors import CapacityExhausted, InvalidInput

from .block_manager import BlockManager
from .limits import EngineLimits
from .sequence import PENDING, Sequence, SequenceState
from .stop import FinishReason


@dataclass(frozen=True)
class Chunk:
    """`num_tokens` tokens of `seq` from position `start` run this step."""

    seq: Sequence
    start: int
    num_tokens: int

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the sequence's last token, so a new token is sampled."""
        return self.start + self.num_tokens == self.seq.num_tokens

    @property
    def token_ids(self) -> list[int]:
        return self.seq.token_ids(self.start, self.start + self.num_tokens)


class Scheduler:
    def __init__(self, limits: EngineLimits, blocks: BlockManager):
        self.limits, self.blocks = limits, blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_reserved = 0  # blocks promised to running sequences
        self.deadlines: list[tuple[float, int, Sequence]] = []  # a heap; the int breaks ties
        self.order = itertools.count()
        self.num_admitted = self.num_expired = 0

    def add(self, seq: Sequence) -> None:
        self.check_fits(seq)
        if len(self.waiting) >= self.limits.max_queue_size:
            raise CapacityExhausted(f"the waiting queue is full ({self.limits.max_queue_size} requests): "
                                    "retry later")
        self.waiting.append(seq)
        if seq.deadline is not None:
            heapq.heappush(self.deadlines, (seq.deadline, next(self.order), seq))

    def expired(self, now: float) -> list[Sequence]:
        """Unfinished sequences whose deadline is not after `now` (the caller ends them)."""
        found = []
        while self.deadlines and self.deadlines[0][0] <= now:
            seq = heapq.heappop(self.deadlines)[2]
            found += [] if seq.is_finished else [seq]
        self.num_expired += len(found)
        return found

    def check_fits(self, seq: Sequence) -> None:
        """Refuse at once what could never run under these limits."""
        n, limits = len(seq.prompt_ids), self.limits
        if n == 0:
            raise InvalidInput("the prompt is empty: give at least one token")
        if n > limits.max_input_len:
            raise InvalidInput(f"the prompt has {n} tokens, more than the engine's max_input_len "
                               f"{limits.max_input_len}: shorten it")
        if n + seq.params.max_new_tokens > limits.max_seq_len:
            raise InvalidInput(f"prompt ({n} tokens) + max_new_tokens ({seq.params.max_new_tokens}) exceeds the "
                               f"engine's max_seq_len {limits.max_seq_len}: lower max_new_tokens")
        if self.blocks_needed(seq) > self.blocks.num_blocks:
            raise InvalidInput(f"the request needs {self.blocks_needed(seq)} KV blocks, more than the pool's "
                               f"{self.blocks.num_blocks}: lower max_new_tokens or the prompt")

    def blocks_needed(self, seq: Sequence) -> int:
        return self.blocks.blocks_for(seq.max_tokens)

    def schedule(self) -> list[Chunk]:
        budget = [self.limits.max_num_tokens]
        decodes = [s for s in self.running if s.num_pending == 1]
        prefills = [s for s in self.running if s.num_pending > 1]
        chunks = [self.take(seq, budget) for seq in decodes + prefills if budget[0] > 0]
        while self.waiting and budget[0] > 0 and self.can_admit(self.waiting[0]):
            chunks.append(self.take(self.admit(), budget))
        return chunks

    def schedule_ahead(self, seqs: list[Sequence]) -> list[Chunk] | None:
        """The engine's lookahead: the next step while the tokens that `seqs` just sampled are still on the
        device (each stands in as PENDING at the end of its output ids until the engine reads it), where
        that step is certainly one decode token for each of them: every running sequence sampled, none
        at its last token, no waiting request could join. Else None, and nothing changed."""
        if (set(seqs) != set(self.running) or len(seqs) > self.limits.max_num_tokens
                or any(len(seq.output_ids) + 1 >= seq.params.max_new_tokens for seq in seqs)
                or (self.waiting and self.can_admit(self.waiting[0]))):
            return None
        for seq in seqs:
            seq.output_ids.append(PENDING)
        return [self.take(seq, [1]) for seq in seqs]

    def take(self, seq: Sequence, budget: list[int]) -> Chunk:
        n = min(seq.num_pending, budget[0])
        budget[0] -= n
        self.blocks.ensure(seq, seq.num_computed + n)
        return Chunk(seq, seq.num_computed, n)

    def can_admit(self, seq: Sequence) -> bool:
        return (len(self.running) < self.limits.max_batch_size
                and self.num_reserved + self.blocks_needed(seq) <= self.blocks.num_blocks)

    def admit(self) -> Sequence:
        seq = self.waiting.popleft()
        seq.state = SequenceState.RUNNING
        self.running.append(seq)
        self.num_reserved += self.blocks_needed(seq)
        self.num_admitted += 1
        return seq

    def advance(self, chunks: list[Chunk]) -> None:
        """The chunks ran: their tokens' K/V are now in the cache."""
        for chunk in chunks:
            chunk.seq.num_computed = chunk.start + chunk.num_tokens

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Done or aborted: out of the queues, blocks back to the pool at once."""
        if seq.state is SequenceState.RUNNING:
            self.running.remove(seq)
            self.num_reserved -= self.blocks_needed(seq)
        elif seq.state is SequenceState.WAITING:
            self.waiting.remove(seq)
        self.blocks.free(seq)
        seq.state, seq.finish_reason = SequenceState.FINISHED, reason
        if len(self.deadlines) > 2 * (len(self.waiting) + len(self.running)) + 64:  # drop finished entries
            self.deadlines = [entry for entry in self.deadlines if not entry[2].is_finished]
            heapq.heapify(self.deadlines)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)
