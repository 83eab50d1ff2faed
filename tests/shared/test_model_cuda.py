"""The same model code on CUDA (skipped without a GPU; run on the lent GPU)."""

import pytest
import torch

from dbrx_serve.shared.reference import greedy_generate, load_hf_model
from dbrx_serve.shared.testing import TinySpec, save_tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SPEC = TinySpec(kv_n_heads=2, clip_qkv=0.3, moe_top_k=2, vocab_size=512, seed=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("cuda")
    hf = save_tiny_model(path, SPEC, tokenizer=False)
    return hf, path


@torch.no_grad()
def test_float32_on_cuda_matches_transformers(models):
    hf, path = models
    ours = load_hf_model(path, torch.float32, "cuda")
    ids = torch.randint(0, SPEC.vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))
    ref = hf(ids).logits[0]
    got = ours(ids.cuda(), torch.arange(24, device="cuda")[None])[0].cpu()
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-4
    expected = hf.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)[0, 24:].tolist()
    assert greedy_generate(ours, ids[0].tolist(), 32) == expected
