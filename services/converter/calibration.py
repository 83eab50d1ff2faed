"""INT8 KV-cache calibration (docs/trtllm-checkpoint.md, "INT8 KV cache").

Runs our reference forward pass (float32) over the calibration text, one
sample at a time, and records per layer:
- TensorRT-LLM's scalar: max |Wqkv output| over Q, K and V, before the clamp;
- ours: max |K| after the clamp and RoPE, max |V| after the clamp (what the
  cache stores), seen by the `attend` function each block calls.
Each divided by 127.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from dbrx_serve.shared.errors import InvalidInput, NotFound
from dbrx_serve.shared.model import causal_attention
from dbrx_serve.shared.reference import load_hf_model

from .prompts import BUILTIN_ARTICLES

MAX_TOKENS = 512
BUILTIN = "builtin"


@dataclass(frozen=True)
class CalibrationSet:
    """The token ids to calibrate on and where they came from."""

    dataset: str
    samples: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class KVScales:
    """Per global layer: TensorRT-LLM's kv_cache_scaling_factor and our K and V scales."""

    trtllm: tuple[float, ...]
    k: tuple[float, ...]
    v: tuple[float, ...]

    def to_json(self, calib: CalibrationSet) -> dict:
        return {"calibration": {"dataset": calib.dataset, "samples": len(calib.samples), "max_seq_len": MAX_TOKENS},
                "layers": [{"k": k, "v": v} for k, v in zip(self.k, self.v)]}


def prompt_of(article: str) -> str:
    """summarize.py's prompt: article + ' TL;DR: ', stripped, " n't" -> "n't"."""
    return (article + " TL;DR: ").strip().replace(" n't", "n't")


def read_articles(path: str | Path, count: int) -> list[str]:
    """The first `count` articles of a jsonl file (an "article" string per line)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"calibration dataset {path} does not exist")
    articles = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if len(articles) == count:
                break
            if line.strip():
                articles.append(_article(line, path, number))
    if len(articles) < count:
        raise InvalidInput(f"calibration dataset {path} has {len(articles)} articles; calib_size asks for {count}")
    return articles


def _article(line: str, path: Path, number: int) -> str:
    try:
        article = json.loads(line).get("article")
    except (json.JSONDecodeError, AttributeError):
        article = None
    if not isinstance(article, str):
        raise InvalidInput(f"{path} line {number}: expected a JSON object with an 'article' string")
    return article


def calibration_articles(dataset: str | None, size: int | None) -> tuple[str, list[str]]:
    if dataset:
        return str(Path(dataset).absolute()), read_articles(dataset, size or 1)
    if size is not None and size > len(BUILTIN_ARTICLES):
        raise InvalidInput(f"calib_size {size} exceeds the {len(BUILTIN_ARTICLES)} built-in calibration "
                           "prompts: give --calib_dataset for more")
    return BUILTIN, list(BUILTIN_ARTICLES[:size])


def calibration_set(model_dir: str | Path, dataset: str | None, size: int | None) -> CalibrationSet:
    """Tokenize the calibration text with the model's own tokenizer (refused when it has none)."""
    from dbrx_serve.services.tokenizer.tokenizer import load_tokenizer

    name, articles = calibration_articles(dataset, size)
    try:
        tokenizer = load_tokenizer(model_dir)
    except NotFound as err:
        raise InvalidInput(f"--int8_kv_cache tokenizes calibration text with the model's tokenizer, "
                           f"and {model_dir} has none: {err}") from None
    ids = tokenizer.encode([prompt_of(a) for a in articles])
    return CalibrationSet(name, tuple(tuple(x[:MAX_TOKENS]) for x in ids if x))


class KVRecorder:
    """Running maxima per layer: forward hooks on each block's qkv, and an `attend` wrapper."""

    def __init__(self, num_layers: int):
        self.qkv, self.k, self.v = [0.0] * num_layers, [0.0] * num_layers, [0.0] * num_layers

    def qkv_hook(self, layer: int):
        def hook(_module, _inputs, output):  # the Wqkv output, before the clamp
            self.qkv[layer] = max(self.qkv[layer], output.abs().max().item())
        return hook

    def attend(self, layer: int, q, k, v, positions):  # k after clamp and RoPE, v after clamp
        self.k[layer] = max(self.k[layer], k.abs().max().item())
        self.v[layer] = max(self.v[layer], v.abs().max().item())
        return causal_attention(layer, q, k, v, positions)

    def scales(self) -> KVScales:
        return KVScales(*(tuple(m / 127.0 for m in maxima) for maxima in (self.qkv, self.k, self.v)))


@torch.inference_mode()
def calibrate(model_dir: str | Path, calib: CalibrationSet,
              on_sample: Callable[[int], None] = lambda i: None) -> KVScales:
    """Run the reference model over every sample; `on_sample(i)` after each (progress, cancel)."""
    model = load_hf_model(model_dir, torch.float32)
    recorder = KVRecorder(len(model.transformer.layers))
    handles = [block.attention.qkv.register_forward_hook(recorder.qkv_hook(i))
               for i, block in enumerate(model.transformer.layers)]
    try:
        for i, sample in enumerate(calib.samples):
            tokens = torch.tensor([sample])
            model(tokens, torch.arange(len(sample))[None], recorder.attend)
            on_sample(i)
    finally:
        for handle in handles:
            handle.remove()
    return recorder.scales()
