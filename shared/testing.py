"""Tiny random DBRX models for tests and the demo, made with transformers'
`DbrxForCausalLM` (the oracle) and saved with `save_pretrained`, with a small
byte-level BPE in tiktoken format and DBRX's special tokens beside them.
Deterministic for a given spec (seed included)."""

import base64
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

DBRX_VOCAB_SIZE = 100352  # rows of wte/lm_head in DBRX (docs/tokenizer.md)
CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|"""
                  r"""\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
SPECIAL_TOKENS = {  # DBRX's ids (docs/tokenizer.md)
    "<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276, "<|pad|>": 100277, "<|im_start|>": 100278, "<|im_end|>": 100279,
}
TINY_BPE_FILE = "tiny_bpe.tiktoken"
TINY_CORPUS = """\
Born in north-east France, Soyer trained as a chef in Paris before moving to London.
The quick brown fox jumps over the lazy dog. What is AGI? Artificial general intelligence
is a machine that can learn any task a person can. The court said on Wednesday that the
case would be heard again. She said: "We don't know yet, but we're hopeful."
def add(a, b):
    return a + b  # numbers 0123456789 and symbols !?.,;:()[]{}<>
Summaries are short; articles are long. TL;DR: the model answers questions.
"""


@dataclass(frozen=True)
class TinySpec:
    d_model: int = 64
    n_heads: int = 4
    kv_n_heads: int = 2
    n_layers: int = 2
    ffn_hidden_size: int = 32
    moe_num_experts: int = 4
    moe_top_k: int = 2
    clip_qkv: float | None = 8.0
    moe_normalize_expert_weights: float | None = 1.0
    vocab_size: int = DBRX_VOCAB_SIZE
    rope_theta: float = 500000.0
    max_seq_len: int = 256
    init_std: float = 0.1
    seed: int = 0


def hf_config(spec: TinySpec):
    """A transformers DbrxConfig; theta goes to both places (transformers reads only rope_parameters)."""
    from transformers import DbrxConfig

    return DbrxConfig(
        d_model=spec.d_model, n_heads=spec.n_heads, n_layers=spec.n_layers, max_seq_len=spec.max_seq_len,
        vocab_size=spec.vocab_size, initializer_range=spec.init_std,
        attn_config={"kv_n_heads": spec.kv_n_heads, "clip_qkv": spec.clip_qkv, "rope_theta": spec.rope_theta},
        ffn_config={"ffn_hidden_size": spec.ffn_hidden_size, "moe_num_experts": spec.moe_num_experts,
                    "moe_top_k": spec.moe_top_k, "moe_normalize_expert_weights": spec.moe_normalize_expert_weights},
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        **_special_ids(spec.vocab_size),
    )


def _special_ids(vocab_size: int) -> dict:
    """eos/pad ids when the vocabulary holds DBRX's specials (tiny parity models may not)."""
    if vocab_size <= SPECIAL_TOKENS["<|im_end|>"]:
        return {}
    return {"eos_token_id": SPECIAL_TOKENS["<|endoftext|>"], "pad_token_id": SPECIAL_TOKENS["<|pad|>"]}


def make_hf_model(spec: TinySpec):
    """The random transformers model of `spec` (float32, eval mode); norms perturbed around 1."""
    from transformers import DbrxForCausalLM

    torch.manual_seed(spec.seed)
    model = DbrxForCausalLM(hf_config(spec)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.1)
    return model


def save_tiny_model(out_dir: str | Path, spec: TinySpec = TinySpec(), tokenizer: bool = True,
                    max_shard_size: str | None = None):
    """Write a HF DBRX directory; returns the transformers model (the oracle for tests)."""
    out = Path(out_dir)
    model = make_hf_model(spec)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model.save_pretrained(out, **kwargs)
    (out / "tiny_spec.json").write_text(json.dumps(asdict(spec), indent=2))
    if tokenizer:
        write_tokenizer_files(out)
    return model


def write_tokenizer_files(out_dir: str | Path, num_merges: int = 256) -> None:
    """A byte-level BPE trained on a built-in text, DBRX's specials and stop ids."""
    from tiktoken._educational import bpe_train

    out = Path(out_dir)
    ranks = bpe_train(TINY_CORPUS, 256 + num_merges, CL100K_PATTERN, visualise=None)
    lines = [base64.b64encode(token) + b" " + str(rank).encode() for token, rank in sorted(ranks.items(),
                                                                                           key=lambda kv: kv[1])]
    (out / TINY_BPE_FILE).write_bytes(b"\n".join(lines) + b"\n")
    added = {text: i for text, i in SPECIAL_TOKENS.items()}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "model_name": "tiny-dbrx", "add_bos_token": False, "use_default_system_prompt": False,
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>",
        "unk_token": "<|endoftext|>",
        "added_tokens_decoder": {str(i): {"content": text, "special": True} for text, i in added.items()},
    }, indent=2))
    (out / "generation_config.json").write_text(json.dumps({
        "eos_token_id": [SPECIAL_TOKENS["<|endoftext|>"], SPECIAL_TOKENS["<|im_end|>"]],
        "pad_token_id": SPECIAL_TOKENS["<|pad|>"]}, indent=2))
