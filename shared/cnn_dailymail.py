"""CNN/DailyMail as summarize.py (docs/trtllm-checkpoint.md) and the int8
KV-cache calibration read it: a jsonl file of one JSON object per line with
an "article" (and, to evaluate, a "highlights") string, and summarize.py's
prompt made from an article."""

import json
from pathlib import Path

from .errors import InvalidInput


def prompt_of(article: str) -> str:
    """summarize.py's prompt: article + ' TL;DR: ', stripped, " n't" -> "n't"."""
    return (article + " TL;DR: ").strip().replace(" n't", "n't")


def read_records(path: str | Path, keys: tuple[str, ...], count: int | None, what: str) -> list[dict]:
    """The first `count` records (every one when None), each with a string at every key;
    `what` names the file in messages ("calibration dataset", "--dataset")."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"{what} {path} does not exist")
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if len(records) == count:
                break
            if line.strip():
                records.append(_record(line, keys, path, number))
    if not records:
        raise InvalidInput(f"{what} {path} holds no records: give a jsonl file of JSON objects, one a line")
    return records


def _record(line: str, keys: tuple[str, ...], path: Path, number: int) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or not all(isinstance(record.get(key), str) for key in keys):
        wanted = " and ".join(f"{'an' if key[0] in 'aeiou' else 'a'} {key!r} string" for key in keys)
        raise InvalidInput(f"{path} line {number}: expected a JSON object with {wanted}")
    return record
