"""`dbrx build`: checkpoint -> engine directory (flags of trtllm-build).

In-process by default: the build is a job in the job store (`--database_url`,
default DBRX_DATABASE_URL, else the embedded SQLite file) run by a worker
thread of this command, so `dbrx jobs` sees it. With `--server HOST:PORT` it
is submitted to a builder service and run by its workers. Either way a
progress bar follows the job; a failed or cancelled build exits 1 with the
job's message. Ctrl-C cancels an in-process build (nothing is left behind).
"""

import logging

from .stage_jobs import absolute, report, run_in_process, run_remote

LOG_LEVELS = {"internal_error": "ERROR", "error": "ERROR", "warning": "WARNING", "info": "INFO",
              "verbose": "DEBUG", "debug": "DEBUG", "trace": "DEBUG"}


def add_parser(subparsers):
    p = subparsers.add_parser("build", help="TensorRT-LLM checkpoint -> engine directory")
    p.add_argument("--checkpoint_dir", required=True)
    p.add_argument("--output_dir", default="engine_outputs")
    p.add_argument("--max_batch_size", type=int, default=2048)
    p.add_argument("--max_input_len", type=int, default=1024, help="clipped to max_seq_len")
    p.add_argument("--max_seq_len", type=int, default=None, help="default: the model's max_position_embeddings")
    p.add_argument("--max_beam_width", type=int, default=1)
    p.add_argument("--max_num_tokens", type=int, default=8192)
    p.add_argument("--kv_cache_type", default="paged")
    p.add_argument("--kv_cache_dtype", choices=["model", "int8"], default=None,
                   help="default: int8 when the checkpoint has INT8 KV-cache scales, else the model dtype")
    p.add_argument("--tokens_per_block", type=int, default=32)
    p.add_argument("--gpt_attention_plugin", default="auto", help="recorded (TensorRT kernel choice)")
    p.add_argument("--gemm_plugin", default=None, help="recorded (TensorRT kernel choice)")
    p.add_argument("--moe_plugin", default="auto", help="recorded (TensorRT kernel choice)")
    p.add_argument("--context_fmha", default="enable", help="recorded (TensorRT kernel choice)")
    p.add_argument("--remove_input_padding", default="enable", help="recorded (TensorRT kernel choice)")
    p.add_argument("--tokenizer_dir", default=None,
                   help="tokenizer files to copy into the engine (default: the HF model dir of the checkpoint)")
    p.add_argument("--workers", type=int, default=1, help="ranks built in parallel processes")
    p.add_argument("--tune", default="fast", choices=["off", "fast", "full"],
                   help="time the GEMM kernels' configurations for the engine's shapes on this CUDA GPU and store "
                        "the fastest in the engine (fast: a few around the default; full: a wide grid); without "
                        "a CUDA device the build skips it")
    p.add_argument("--log_level", dest="build_log_level", default="info", choices=list(LOG_LEVELS),
                   help="the builder's log level in-process (a --server build logs at its worker's level)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--server", default=None, help="HOST:PORT of a builder service")
    p.add_argument("--auth_token", default=None, help="bearer token for --server")
    p.add_argument("--tls_ca", default=None, help="PEM file of the CA that signed --server's certificate")
    p.add_argument("--database_url", default=None, help="job store of an in-process build")
    p.set_defaults(func=run)
    return p


def options_from_args(args):
    """BuildOptions with absolute paths (a worker may run elsewhere in the file system's tree)."""
    from dbrx_serve.services.builder.options import BuildOptions

    return BuildOptions(
        checkpoint_dir=absolute(args.checkpoint_dir), output_dir=absolute(args.output_dir),
        max_batch_size=args.max_batch_size, max_input_len=args.max_input_len, max_seq_len=args.max_seq_len,
        max_beam_width=args.max_beam_width, max_num_tokens=args.max_num_tokens, kv_cache_type=args.kv_cache_type,
        kv_cache_dtype=args.kv_cache_dtype, tokens_per_block=args.tokens_per_block,
        gpt_attention_plugin=args.gpt_attention_plugin, gemm_plugin=args.gemm_plugin, moe_plugin=args.moe_plugin,
        context_fmha=args.context_fmha, remove_input_padding=args.remove_input_padding,
        tokenizer_dir=absolute(args.tokenizer_dir), workers=args.workers, tune=args.tune,
        log_level=args.build_log_level, overwrite=args.overwrite)


def run(args) -> int:
    from dbrx_serve.services.builder.stage import BUILDER

    options = options_from_args(args)
    logging.getLogger("dbrx_serve.builder").setLevel(LOG_LEVELS[options.log_level])
    if args.server:
        job = run_remote(args.server, lambda channel, metadata: submit(channel, metadata, options),
                         args.auth_token, args.tls_ca)
    else:
        job = run_in_process(BUILDER, args.database_url, options)
    return report(job, "build", "engine")


def submit(channel, metadata, options):
    from dbrx_serve.services.builder.convert_pb import options_to_pb
    from dbrx_serve.shared.generated.dbrx.serve.v1 import builder_pb2_grpc

    return builder_pb2_grpc.BuilderServiceStub(channel).SubmitBuild(options_to_pb(options), metadata=metadata)
