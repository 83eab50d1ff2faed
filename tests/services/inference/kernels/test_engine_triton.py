"""The engine on the triton backend: the same greedy tokens as the plain path
for float, weight-only and int8-KV engines (compiled on a GPU, interpreted on
the CPU; group-wise int4 on the wide tiny model: the greedy tokens of its
dequantized reference, and its logits within test_engine_quantized.py's bound of
them); on a GPU, decode steps replayed from CUDA graphs give the tokens of
eager steps, and a batch's seeded draws do not depend on the graph bucket."""

import pytest
import torch

from dbrx_serve.services.inference.engine import Engine
from dbrx_serve.services.inference.params import SamplingParams
from dbrx_serve.shared.reference import greedy_generate

from ..conftest import WIDE_ENGINES
from ..helpers import assert_same_greedy
from ..test_engine_quantized import WIDE_BOUND, dequantized_reference, max_logit_diff
from .conftest import DEVICE

PROMPTS = [list(range(200, 260)), [5, 6, 7], list(range(1000, 1017))]
GREEDY = SamplingParams(max_new_tokens=10, temperature=0)


# Under Triton's interpreter (CPU) each engine takes ~23 s: there the float and int4 engines (every
# kernel, weight-only GEMMs included); on a GPU all five. int8 weights, group-wise int4 and the int8 KV
# cache are also covered kernel by kernel on the CPU (test_gemm.py, test_moe.py, test_attention.py).
@pytest.mark.parametrize("name", ["fp32", "int4"] + (["int8", "int8kv", "int4g128"] if torch.cuda.is_available()
                                                     else []))
def test_triton_backend_gives_the_plain_paths_greedy_tokens(name, engine_dir, reference_model, banned):
    triton = Engine.from_dir(engine_dir(name), device=DEVICE, backend="triton", num_kv_blocks=64)
    if name in WIDE_ENGINES:  # group-wise int4 on the wide model: its dequantized reference's tokens and logits
        reference = dequantized_reference(triton)
        for prompt, got in zip(PROMPTS, triton.generate(PROMPTS, GREEDY)):
            want = greedy_generate(reference, prompt, GREEDY.max_new_tokens, banned=banned)
            assert_same_greedy(got.output_ids, want, prompt, reference, banned)
        assert max_logit_diff(triton, reference, PROMPTS, banned, 16) < WIDE_BOUND
    else:
        plain = Engine.from_dir(engine_dir(name)).generate(PROMPTS, GREEDY)
        for prompt, got, want in zip(PROMPTS, triton.generate(PROMPTS, GREEDY), plain):
            assert_same_greedy(got.output_ids, want.output_ids, prompt, reference_model, banned)
    assert triton.stats().kv_blocks_used == 0


@pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA graphs need a CUDA GPU")
def test_cuda_graph_decode_equals_eager_decode(engine_dir):
    params = [GREEDY, SamplingParams(max_new_tokens=10, temperature=0.8, top_p=0.9, seed=3), GREEDY]
    eager = Engine.from_dir(engine_dir("fp32"), device="cuda", max_graph_batch_size=0)
    graphs = Engine.from_dir(engine_dir("fp32"), device="cuda")
    assert eager.runner.graphs is None and graphs.runner.graphs.sizes[0] == 1
    want = [r.output_ids for r in eager.generate(PROMPTS, params)]
    assert [r.output_ids for r in graphs.generate(PROMPTS, params)] == want
    alone = graphs.generate([PROMPTS[1]], params[1])[0].output_ids  # bucket 1 instead of 4
    assert alone == want[1]
