"""A step's plan as the other ranks of a world get it: packed into one int32 array and back, and
cut into micro-batches of whole sequences for the pipeline stages."""

import numpy as np
import pytest

from dbrx_serve.services.inference.params import SamplingParams
from dbrx_serve.services.inference.plan import StepPlan, micro_batches
from dbrx_serve.services.inference.scheduler import Chunk
from dbrx_serve.services.inference.sequence import Sequence
from dbrx_serve.services.inference.stop import StopChecker

PAGE = 8
FIELDS = ("token_ids", "positions", "slots", "query_start", "seq_lens", "block_tables", "sample_rows")


def plan_of(*chunks) -> StepPlan:
    """(prompt length, first position, tokens) per sequence; sequence i owns blocks 10i, 10i+1, ..."""
    made = []
    for i, (length, start, count) in enumerate(chunks):
        seq = Sequence(f"s{i}", list(range(100, 100 + length)), SamplingParams(), StopChecker((), 8))
        seq.block_table = [10 * i + b for b in range(-(-length // PAGE))]
        made.append(Chunk(seq, start, count))
    return StepPlan.of(made, PAGE)


MIXED = plan_of((20, 0, 13), (31, 30, 1), (2, 0, 2), (40, 0, 40), (9, 8, 1))  # one chunk stops short: no sample


def assert_equal(a: StepPlan, b: StepPlan) -> None:
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype == np.int32 and x.shape == y.shape and (x == y).all(), name


def test_a_packed_plan_unpacks_to_the_same_plan():
    packed = MIXED.pack()
    assert packed.dtype == np.int32 and packed.ndim == 1
    assert_equal(StepPlan.unpack(packed), MIXED)


@pytest.mark.parametrize("count", [1, 2, 3, 5, 9])
def test_micro_batches_are_whole_sequences_in_order_and_sample_the_plans_rows(count):
    parts = micro_batches(MIXED, count)
    assert len(parts) == min(count, MIXED.num_seqs) and all(p.num_seqs > 0 for p in parts)
    offsets = np.cumsum([0] + [p.num_tokens for p in parts])
    for name in ("token_ids", "positions", "slots"):
        assert (np.concatenate([getattr(p, name) for p in parts]) == getattr(MIXED, name)).all()
    assert (np.concatenate([p.sample_rows + start for p, start in zip(parts, offsets)]) == MIXED.sample_rows).all()
    assert (np.concatenate([p.seq_lens for p in parts]) == MIXED.seq_lens).all()
    assert (np.concatenate([p.block_tables for p in parts]) == MIXED.block_tables).all()
    for part in parts:
        assert part.query_start[0] == 0 and part.query_start[-1] == part.num_tokens


def test_two_micro_batches_split_the_tokens_about_evenly():
    decode = plan_of(*[(5, 4, 1)] * 8)
    assert [p.num_seqs for p in micro_batches(decode, 2)] == [4, 4]
    assert [p.num_tokens for p in micro_batches(MIXED, 2)] == [16, 41]  # 56 tokens: the cut nearest the middle
