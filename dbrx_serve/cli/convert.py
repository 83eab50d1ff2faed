"""`dbrx convert`: HF DBRX checkpoint -> TensorRT-LLM checkpoint (flags of convert_checkpoint.py).

In-process by default: the conversion is a job in the job store (`--database_url`,
default DBRX_DATABASE_URL, else the embedded SQLite file) run by a worker
thread of this command, so `dbrx jobs` sees it. With `--server HOST:PORT` it is
submitted to a converter service and run by its workers. Either way a progress
bar follows the job; a failed or cancelled conversion exits 1 with the job's
message. Ctrl-C cancels an in-process conversion (nothing is left behind).
"""

from .stage_jobs import absolute, report, run_in_process, run_remote


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
    p.add_argument("--group_size", type=int, default=None,
                   help="int4 only: one scale per 64 or 128 input columns (W4A16_GPTQ); default: per channel")
    p.add_argument("--quantize_at_build", action="store_true", help="float weights + quant_algo, for trtllm-build")
    p.add_argument("--int8_kv_cache", action="store_true")
    p.add_argument("--calib_dataset", default=None, help="jsonl with an 'article' field")
    p.add_argument("--calib_size", type=int, default=None)
    p.add_argument("--logits_dtype", choices=["float16", "float32"], default="float32")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--server", default=None, help="HOST:PORT of a converter service")
    p.add_argument("--auth_token", default=None, help="bearer token for --server")
    p.add_argument("--tls_ca", default=None, help="PEM file of the CA that signed --server's certificate")
    p.add_argument("--database_url", default=None, help="job store of an in-process conversion")
    p.set_defaults(func=run)
    return p


def options_from_args(args):
    """ConvertOptions with absolute paths (a worker may run in another directory)."""
    from dbrx_serve.services.converter.options import ConvertOptions

    return ConvertOptions(
        model_dir=absolute(args.model_dir), output_dir=absolute(args.output_dir), dtype=args.dtype,
        tp_size=args.tp_size, pp_size=args.pp_size, moe_tp_size=args.moe_tp_size, moe_ep_size=args.moe_ep_size,
        use_weight_only=args.use_weight_only, weight_only_precision=args.weight_only_precision,
        group_size=args.group_size, quantize_at_build=args.quantize_at_build, int8_kv_cache=args.int8_kv_cache,
        calib_dataset=absolute(args.calib_dataset), calib_size=args.calib_size, logits_dtype=args.logits_dtype,
        workers=args.workers, overwrite=args.overwrite)


def run(args) -> int:
    from dbrx_serve.services.converter.stage import CONVERTER

    options = options_from_args(args)
    if args.server:
        job = run_remote(args.server, lambda channel, metadata: submit(channel, metadata, options),
                         args.auth_token, args.tls_ca)
    else:
        job = run_in_process(CONVERTER, args.database_url, options)
    return report(job, "convert", "checkpoint")


def submit(channel, metadata, options):
    from dbrx_serve.services.converter.convert_pb import options_to_pb
    from dbrx_serve.shared.generated.dbrx.serve.v1 import converter_pb2_grpc

    return converter_pb2_grpc.ConverterServiceStub(channel).SubmitConvert(options_to_pb(options), metadata=metadata)
