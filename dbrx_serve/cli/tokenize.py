"""`dbrx tokenize`: encode texts (or, with --decode, decode ids) and print one
JSON object per input, {"text": ..., "ids": [...]}.

    dbrx tokenize --tokenizer_dir T "Hello world"
    dbrx tokenize --tokenizer_dir T --decode "[9906, 1917]" 9906,1917
    printf '"Hello"\\n"world"\\n' | dbrx tokenize --tokenizer_dir T

Without arguments it reads stdin: one JSON string per line, or with --decode
one JSON list of ids per line."""

import argparse
import json
import sys
from typing import Iterable, Iterator

from dbrx_serve.shared.errors import DbrxServeError, InvalidInput


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("tokenize", help="encode texts or decode ids with DBRX's tokenizer, as JSON",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer_dir", required=True, help="directory with a *.tiktoken file or tokenizer.json")
    parser.add_argument("--decode", action="store_true", help="inputs are lists of ids: print their text")
    parser.add_argument("--allow_special_tokens", action="store_true",
                        help="encode special-token text (<|im_end|> ...) as the special ids")
    parser.add_argument("--skip_special_tokens", action="store_true", help="with --decode: drop special tokens")
    parser.add_argument("inputs", nargs="*", metavar="TEXT_OR_IDS")
    parser.set_defaults(func=run)
    return parser


def parse_ids(value: str) -> list[int]:
    """A JSON list `[1, 2]`, or ids separated by commas or spaces: `1,2` / `1 2`."""
    text = value.strip()
    try:
        ids = json.loads(text) if text.startswith("[") else [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise InvalidInput(f"cannot read token ids from {value!r}: give a JSON list like [9906, 1917]") from None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise InvalidInput(f"token ids must be a list of integers, got {value!r}")
    return ids


def parse_text_line(line: str, number: int) -> str:
    try:
        text = json.loads(line)
    except json.JSONDecodeError:
        raise InvalidInput(f"stdin line {number}: expected a JSON string such as \"Hello\", got {line[:60]!r}") from None
    if not isinstance(text, str):
        raise InvalidInput(f"stdin line {number}: expected a JSON string, got {type(text).__name__}")
    return text


def stdin_inputs(lines: Iterable[str], decode: bool) -> Iterator:
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield parse_ids(line) if decode else parse_text_line(line, number)


def results(tokenizer, inputs: Iterable, args: argparse.Namespace) -> Iterator[dict]:
    for item in inputs:
        if args.decode:
            yield {"text": tokenizer.decode(item, args.skip_special_tokens), "ids": item}
        else:
            yield {"text": item, "ids": tokenizer.encode_text(item, args.allow_special_tokens)}


def run(args: argparse.Namespace) -> int:
    from dbrx_serve.services.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer(args.tokenizer_dir, num_threads=1)
        inputs = ([parse_ids(v) for v in args.inputs] if args.decode else args.inputs) if args.inputs \
            else stdin_inputs(sys.stdin, args.decode)
        for result in results(tokenizer, inputs, args):
            print(json.dumps(result, ensure_ascii=False), flush=True)
    except DbrxServeError as error:
        print(f"dbrx tokenize: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run without the `dbrx` command: `python -m dbrx_serve.cli.tokenize ...`."""
    parser = argparse.ArgumentParser(prog="dbrx")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["tokenize", *(sys.argv[1:] if argv is None else argv)])
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
