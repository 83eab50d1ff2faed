"""`dbrx summarize`: TensorRT-LLM's summarize.py on our engine (ROUGE on CNN/DailyMail)."""

from .not_built import not_built_yet


def add_parser(subparsers):
    p = subparsers.add_parser("summarize", help="summarization benchmark with ROUGE, as summarize.py")
    p.add_argument("--engine_dir", required=True)
    p.add_argument("--hf_model_dir", required=True)
    p.add_argument("--test_hf", action="store_true")
    p.add_argument("--dataset", default=None, help="jsonl with 'article' and 'highlights'")
    p.add_argument("--max_ite", type=int, default=20)
    p.add_argument("--output_len", type=int, default=100)
    p.add_argument("--max_input_length", type=int, default=923)
    p.add_argument("--batch_size", type=int, default=1)
    p.set_defaults(func=not_built_yet("the summarize issue"))
    return p
