"""`dbrx build`: checkpoint -> engine directory (flags of trtllm-build)."""

from .not_built import not_built_yet


def add_parser(subparsers):
    p = subparsers.add_parser("build", help="TensorRT-LLM checkpoint -> engine directory")
    p.add_argument("--checkpoint_dir", required=True)
    p.add_argument("--output_dir", default="engine_outputs")
    p.add_argument("--max_batch_size", type=int, default=2048)
    p.add_argument("--max_input_len", type=int, default=1024)
    p.add_argument("--max_seq_len", type=int, default=None)
    p.add_argument("--max_beam_width", type=int, default=1)
    p.add_argument("--max_num_tokens", type=int, default=8192)
    p.add_argument("--kv_cache_type", default="paged")
    p.add_argument("--tokens_per_block", type=int, default=32)
    p.add_argument("--gpt_attention_plugin", default="auto")
    p.add_argument("--gemm_plugin", default=None)
    p.add_argument("--moe_plugin", default="auto")
    p.add_argument("--context_fmha", default="enable")
    p.add_argument("--remove_input_padding", default="enable")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--server", default=None, help="HOST:PORT of a builder service")
    p.set_defaults(func=not_built_yet("issue 6"))
    return p
