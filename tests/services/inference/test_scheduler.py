"""The scheduler and block manager alone, without a model: budgets, chunking,
batch size, the bounded queue, refusals, and blocks returned at once."""

import pytest

from dbrx_serve.services.inference.block_manager import BlockManager
from dbrx_serve.services.inference.limits import EngineLimits
from dbrx_serve.services.inference.params import SamplingParams
from dbrx_serve.services.inference.scheduler import Scheduler
from dbrx_serve.services.inference.sequence import Sequence, SequenceState
from dbrx_serve.services.inference.stop import FinishReason, StopChecker
from dbrx_serve.shared.errors import CapacityExhausted, InvalidInput


def seq(name: str, prompt_len: int, max_new: int = 4) -> Sequence:
    params = SamplingParams(max_new_tokens=max_new)
    return Sequence(name, list(range(1, prompt_len + 1)), params, StopChecker((), max_new))


def scheduler(num_blocks=64, **limits) -> Scheduler:
    limits = EngineLimits(**{**dict(max_batch_size=4, max_input_len=64, max_seq_len=128, max_num_tokens=16,
                                    tokens_per_block=4, max_queue_size=8), **limits})
    return Scheduler(limits, BlockManager(num_blocks, limits.tokens_per_block))


def run_step(s: Scheduler) -> list[tuple[str, int, int]]:
    """Schedule, pretend the model ran, append token 7 where a chunk samples."""
    chunks = s.schedule()
    s.advance(chunks)
    for c in chunks:
        if c.samples:
            c.seq.output_ids.append(7)
            if len(c.seq.output_ids) == c.seq.params.max_new_tokens:
                s.finish(c.seq, FinishReason.LENGTH)
    return [(c.seq.request_id, c.start, c.num_tokens) for c in chunks]


def test_long_prompts_are_chunked_within_the_token_budget():
    s = scheduler()
    s.add(seq("a", 40))
    assert run_step(s) == [("a", 0, 16)]
    s.add(seq("b", 3))  # joins between steps
    assert run_step(s) == [("a", 16, 16)]
    assert run_step(s) == [("a", 32, 8), ("b", 0, 3)]
    assert run_step(s) == [("a", 40, 1), ("b", 3, 1)]  # decodes first


def test_chunks_read_prompt_then_output_ids():
    s = scheduler(max_num_tokens=3)
    a = seq("a", 4)
    s.add(a)
    chunks = s.schedule()
    assert chunks[0].token_ids == [1, 2, 3] and not chunks[0].samples
    s.advance(chunks)
    chunks = s.schedule()
    assert chunks[0].token_ids == [4] and chunks[0].samples


def test_max_batch_size_holds_the_rest_waiting():
    s = scheduler(max_batch_size=2)
    for name in "abc":
        s.add(seq(name, 2))
    assert [r[0] for r in run_step(s)] == ["a", "b"]
    assert [x.request_id for x in s.waiting] == ["c"]


def test_admission_waits_for_blocks_and_never_preempts():
    s = scheduler(num_blocks=4)  # 16 slots; each request reserves 2 blocks (prompt 5 + 3 new - 1)
    a, b, c = (seq(name, 5, max_new=4) for name in "abc")
    for x in (a, b, c):
        s.add(x)
    assert {r[0] for r in run_step(s)} == {"a", "b"}
    while not (a.is_finished and b.is_finished):
        assert c.state is SequenceState.WAITING and s.running == [a, b]  # c waits; nobody is preempted
        run_step(s)
        assert s.blocks.stats().used <= 4
    assert s.blocks.stats().used == 0 and list(s.waiting) == [c]  # a's and b's blocks are back
    assert run_step(s) == [("c", 0, 5)] and s.running == [c]  # c is now running, on those blocks
    assert s.blocks.stats().used == 2
    while s.has_unfinished:
        run_step(s)
    assert s.blocks.stats().used == 0 and c.is_finished


def test_the_waiting_queue_is_bounded():
    s = scheduler(max_queue_size=2)
    s.add(seq("a", 2))
    s.add(seq("b", 2))
    with pytest.raises(CapacityExhausted, match="queue is full"):
        s.add(seq("c", 2))


@pytest.mark.parametrize("prompt_len,max_new,message", [
    (0, 4, "prompt is empty"),
    (65, 4, "max_input_len 64"),
    (60, 69, "max_seq_len 128"),
])
def test_requests_that_can_never_fit_are_refused_at_once(prompt_len, max_new, message):
    with pytest.raises(InvalidInput, match=message):
        scheduler().add(seq("x", prompt_len, max_new))


def test_a_request_larger_than_the_pool_is_refused():
    with pytest.raises(InvalidInput, match="more than the pool"):
        scheduler(num_blocks=2).add(seq("x", 10, 4))


def test_finish_frees_blocks_at_once_from_running_and_waiting():
    s = scheduler()
    a, b = seq("a", 10), seq("b", 10)
    s.add(a)
    run_step(s)
    s.add(b)
    assert s.blocks.stats().used == 3  # a's 10 tokens (16 of budget left it whole)
    s.finish(a, FinishReason.CANCELLED)
    s.finish(b, FinishReason.CANCELLED)
    assert s.blocks.stats().used == 0 and not s.has_unfinished
    assert a.state is SequenceState.FINISHED and a.finish_reason is FinishReason.CANCELLED


def test_block_manager_grows_tables_and_takes_blocks_back():
    blocks = BlockManager(3, 4)
    a = seq("a", 1)
    blocks.ensure(a, 5)
    assert len(a.block_table) == 2 and blocks.stats().free == 1
    blocks.ensure(a, 8)
    assert len(a.block_table) == 2
    with pytest.raises(CapacityExhausted):
        blocks.ensure(a, 13)
    blocks.free(a)
    assert a.block_table == [] and blocks.stats().used == 0


def test_expired_finds_passed_deadlines_only_and_counts_them():
    s = scheduler()
    early, late, none = seq("early", 3), seq("late", 3), seq("none", 3)
    early.deadline, late.deadline = 10.0, 20.0
    for x in (late, none, early):
        s.add(x)
    assert s.expired(now=5.0) == []
    assert s.expired(now=10.0) == [early]
    s.finish(early, FinishReason.DEADLINE)
    s.finish(late, FinishReason.CANCELLED)  # ended otherwise before its deadline: not reported again
    assert s.expired(now=100.0) == [] and s.num_expired == 1
    assert [x.request_id for x in s.waiting] == ["none"]


def test_num_admitted_counts_prefills_begun():
    s = scheduler(max_batch_size=1)
    for name in "ab":
        s.add(seq(name, 2, max_new=1))
    run_step(s)
    assert s.num_admitted == 1
    run_step(s)
    assert s.num_admitted == 2
