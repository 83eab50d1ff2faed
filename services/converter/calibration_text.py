"""The calibration text for --int8_kv_cache (docs/trtllm-checkpoint.md): the
articles of a jsonl `--calib_dataset` (first `--calib_size`, default 1 as
TensorRT-LLM) or the built-in prompts (default all), each made into
summarize.py's prompt and tokenized with the model's own tokenizer, first 512
tokens kept."""

from dataclasses import dataclass
from pathlib import Path

from dbrx_serve.shared.cnn_dailymail import prompt_of, read_records
from dbrx_serve.shared.errors import InvalidInput, NotFound

from .prompts import BUILTIN_ARTICLES

MAX_TOKENS = 512
BUILTIN = "builtin"


@dataclass(frozen=True)
class CalibrationSet:
    """The token ids to calibrate on and where they came from."""

    dataset: str
    samples: tuple[tuple[int, ...], ...]


def read_articles(path: str | Path, count: int) -> list[str]:
    """The first `count` articles of a jsonl file (an "article" string per line)."""
    articles = [r["article"] for r in read_records(path, ("article",), count, "calibration dataset")]
    if len(articles) < count:
        raise InvalidInput(f"calibration dataset {path} has {len(articles)} articles; calib_size asks for {count}")
    return articles


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
