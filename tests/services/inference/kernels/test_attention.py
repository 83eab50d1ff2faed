"""Attention over the paged cache: the Triton kernels (clip, rotary, cache write,
causal attention over pages) against the plain path, over mixed steps (whole
prompts, a prompt continued in a second chunk, one-token rows), with float and
int8 KV caches, and with the grouped heads of DBRX (6 query heads per kv head)."""

import pytest
import torch

from dbrx_serve.services.inference.kernels.attention import TritonAttention, TritonPagedCache
from dbrx_serve.services.inference.kernels.gemm import CublasLinear
from dbrx_serve.services.inference.kernels.splits import sum_splits
from dbrx_serve.services.inference.kv_cache import PagedKVCache
from dbrx_serve.shared.kv_scales import KVScales
from dbrx_serve.services.inference.params import SamplingParams
from dbrx_serve.services.inference.plan import StepPlan, empty_decode
from dbrx_serve.services.inference.scheduler import Chunk
from dbrx_serve.services.inference.sequence import Sequence
from dbrx_serve.services.inference.step_tensors import StepTensors
from dbrx_serve.services.inference.stop import StopChecker
from dbrx_serve.shared.config import DbrxConfig
from dbrx_serve.shared.model import Attention, LocalShape, rotary

from .conftest import BOUND, DTYPES, relative_error

CFG = DbrxConfig(vocab_size=64, d_model=192, n_heads=12, n_layers=1, kv_n_heads=2, ffn_hidden_size=32,
                 moe_num_experts=2, moe_top_k=1, clip_qkv=2.0, rope_theta=10000.0, torch_dtype="float32")
PAGE = 8
TABLES = {"a": [3, 0, 7], "b": [1, 5, 11], "c": [2, 4, 6, 8, 10], "d": [9]}  # no block shared
PROMPTS = {"a": 20, "b": 20, "c": 31, "d": 2}  # each has 4 more tokens to decode
STEPS = [[("b", 0, 13), ("c", 0, 30), ("d", 0, 1)],  # prompts, one cut short
         [("d", 1, 1), ("c", 30, 1), ("b", 13, 7), ("a", 0, 20)],  # one-token rows, a continued chunk, a prompt
         [("a", 20, 1), ("b", 20, 1), ("c", 31, 1), ("d", 2, 1)],  # a decode step
         [("a", 21, 1), ("b", 21, 1), ("c", 32, 1), ("d", 3, 1)]]  # and another


def plan_of(step) -> StepPlan:
    chunks = []
    for name, start, count in step:
        seq = Sequence(name, list(range(PROMPTS[name] + 4)), SamplingParams(), StopChecker((), 8))
        seq.block_table = TABLES[name]
        chunks.append(Chunk(seq, start, count))
    return StepPlan.of(chunks, PAGE)


@pytest.mark.parametrize("int8_kv", [False, True], ids=["float-kv", "int8-kv"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_paged_attention_matches_the_plain_path_over_mixed_steps(int8_kv, dtype, device):
    """A decode step runs twice, its keys in 1 run and cut into 4 (flash-decoding's splits): the second
    writes the same cache slots with the same values."""
    shape = LocalShape.of(CFG)
    torch.manual_seed(0)
    plain = Attention(CFG, shape, 0)  # the float32 reference
    fused = Attention(CFG, shape, 0).to(dtype).to(device)
    fused.load_state_dict(plain.state_dict())
    plain.load_state_dict(fused.state_dict())  # the same rounded weights
    fused.__class__, fused.qkv.__class__ = TritonAttention, CublasLinear  # as kernels.swap_modules does
    scales = KVScales((0.02,), (0.02,)) if int8_kv else None
    plain_cache = PagedKVCache(1, 12, PAGE, 2, CFG.head_dim, torch.float32, "cpu", scales)
    tensors = StepTensors(64, 8, 6, torch.device(device))
    cache = TritonPagedCache(CFG, shape, 12, PAGE, dtype, device, scales, tensors)
    for step in STEPS:
        plan = plan_of(step)
        block_q = cache.decode_block_q if plan.is_decode else 4
        plain_cache.prepare(plan)
        x = torch.randn(1, plan.num_tokens, CFG.d_model).to(dtype)
        positions = torch.from_numpy(plan.positions).long()[None]
        cos, sin = rotary(positions, CFG.head_dim, CFG.rope_theta, torch.float32)
        with torch.no_grad():
            want = plain(x.float(), cos, sin, positions, plain_cache.attend)
        for splits in (1, 4) if plan.is_decode else (1,):
            cache.prepare(plan, tensors.load(plan, block_q), block_q, splits)
            with torch.no_grad():
                got = fused(x.to(device), None, None, positions.to(device), cache.attend)
            error = relative_error(got.cpu(), want)
            assert error <= 3 * BOUND[dtype], f"step {step}, {splits} split(s)"  # measured: fp16 2.4e-3


def test_padded_rows_of_a_graph_batch_write_nothing_and_read_nothing(device):
    """Rows a CUDA-graph batch adds (padded_decode) have no slot and no context: the cache is unchanged
    and their output is zero."""
    shape = LocalShape.of(CFG)
    tensors = StepTensors(64, 8, 6, torch.device(device))
    cache = TritonPagedCache(CFG, shape, 12, PAGE, torch.float32, device, None, tensors)
    cache.k.normal_(), cache.v.normal_()
    before = cache.k.clone(), cache.v.clone()
    plan = empty_decode(4)
    cache.prepare(plan, tensors.load(plan, cache.decode_block_q), cache.decode_block_q)
    out = cache.attend(0, torch.randn(1, 4, CFG.qkv_size, device=device))
    assert torch.equal(cache.k, before[0]) and torch.equal(cache.v, before[1])
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("int8_kv", [False, True], ids=["float-kv", "int8-kv"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_qkv_split_sums_are_added_as_sum_splits_adds_them(int8_kv, dtype, device):
    """attend given a projection's K-split partial sums (float32) writes the same cache and output, bit for
    bit, as given their sum from sum_splits (what the projection alone would return)."""
    shape = LocalShape.of(CFG)
    scales = KVScales((0.02,), (0.02,)) if int8_kv else None
    parts = torch.randn(3, 4, CFG.qkv_size, device=device) * 2
    outs = []
    for given in (parts, sum_splits(parts, dtype)[None]):
        tensors = StepTensors(64, 8, 6, torch.device(device))
        cache = TritonPagedCache(CFG, shape, 12, PAGE, dtype, device, scales, tensors)
        for i, kv in enumerate((cache.k, cache.v)):  # the contexts' keys and values (int8: value / 0.02)
            kv.copy_(torch.randn(kv.shape, generator=torch.Generator().manual_seed(i)) * (40 if int8_kv else 1))
        plan = plan_of(STEPS[2])  # a decode step of 4 sequences
        cache.prepare(plan, tensors.load(plan, cache.decode_block_q), cache.decode_block_q)
        outs.append((cache.attend(0, given), cache.k.clone(), cache.v.clone()))
    for got, want in zip(*outs):
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match=rf"partial sums \[S, 4, {CFG.qkv_size}\]"):
        cache.attend(0, parts[0])


@pytest.mark.parametrize("int8_kv", [False, True], ids=["float-kv", "int8-kv"])
def test_heads_grouped_a_program_write_what_one_head_a_program_writes(int8_kv, device, monkeypatch):
    """Past ONE_HEAD_TOKENS tokens qkv_rope_kernel takes groups of heads a program (here 4 of the 12 query
    heads, and the 2 kv heads in a group of 4): the cache and the output (attention over q) are those of
    one head a program, bit for bit, with the splits summed and the rows clipped the same."""
    from dbrx_serve.services.inference.kernels import attention

    shape = LocalShape.of(CFG)
    scales = KVScales((0.02,), (0.02,)) if int8_kv else None
    parts = torch.randn(2, 30, CFG.qkv_size, device=device) * 2  # clipped at 2.0 (CFG.clip_qkv)
    outs = []
    for one_head_tokens in (attention.ONE_HEAD_TOKENS, 0):
        monkeypatch.setattr(attention, "ONE_HEAD_TOKENS", one_head_tokens)
        tensors = StepTensors(64, 8, 6, torch.device(device))
        cache = TritonPagedCache(CFG, shape, 12, PAGE, torch.float32, device, scales, tensors)
        plan = plan_of([("c", 0, 30)])
        cache.prepare(plan, tensors.load(plan, 4), 4)
        outs.append((cache.attend(0, parts), cache.k.clone(), cache.v.clone()))
    for got, want in zip(*outs):
        assert torch.equal(got, want)
    assert outs[0][1].abs().sum() > 0  # the kv heads were written
