"""`dbrx convert`: HF DBRX checkpoint -> TensorRT-LLM checkpoint (flags of convert_checkpoint.py)."""

from .not_built import not_built_yet


def add_parser(subparsers):
    p = subparsers.add_parser("convert", help="HF DBRX checkpoint -> sharded TensorRT-LLM checkpoint")
    p.add_argument("--model_dir", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="default: the HF config's torch_dtype")
    p.add_argument("--tp_size", type=int, default=1)
    p.add_argument("--pp_size", type=int, default=1)
    p.add_argument("--moe_tp_size", type=int, default=None)
    p.add_argument("--moe_ep_size", type=int, default=None)
    p.add_argument("--use_weight_only", action="store_true")
    p.add_argument("--weight_only_precision", default="int8", help="int8 or int4")
    p.add_argument("--quantize_at_build", action="store_true", help="float weights + quant_algo, for trtllm-build")
    p.add_argument("--int8_kv_cache", action="store_true")
    p.add_argument("--calib_dataset", default=None, help="jsonl with an 'article' field")
    p.add_argument("--calib_size", type=int, default=None)
    p.add_argument("--logits_dtype", choices=["float16", "float32"], default="float32")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--server", default=None, help="HOST:PORT of a converter service")
    p.set_defaults(func=not_built_yet("issue 5"))
    return p
