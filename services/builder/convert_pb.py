"""BuildRequest <-> BuildOptions, the one place that knows both. Zero and
empty fields mean trtllm-build's defaults."""

from dataclasses import fields

from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.options import ANY_ABSOLUTE_PATH, PathPolicy
from dbrx_serve.shared.generated.dbrx.serve.v1 import builder_pb2 as pb, common_pb2

from .options import BuildOptions

KV_CACHE_DTYPE_OF_PB = {common_pb2.KV_CACHE_D_TYPE_UNSPECIFIED: None, common_pb2.KV_CACHE_D_TYPE_MODEL: "model",
                        common_pb2.KV_CACHE_D_TYPE_INT8: "int8"}
PB_OF_KV_CACHE_DTYPE = {name: value for value, name in KV_CACHE_DTYPE_OF_PB.items()}
SCALARS = ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens", "max_beam_width", "tokens_per_block",
           "workers", "kv_cache_type", "gpt_attention_plugin", "gemm_plugin", "moe_plugin", "context_fmha",
           "remove_input_padding", "tokenizer_dir", "overwrite", "tune")
PATHS = ("checkpoint_dir", "output_dir", "tokenizer_dir")


def options_from_pb(request: pb.BuildRequest, paths: PathPolicy = ANY_ABSOLUTE_PATH) -> BuildOptions:
    """The options a request asks for, its paths checked against the server's policy."""
    paths.check(request, PATHS, "builder")
    values = {name: getattr(request, name) for name in SCALARS if getattr(request, name)}
    if request.kv_cache_dtype not in KV_CACHE_DTYPE_OF_PB:
        raise InvalidInput(f"unknown kv_cache_dtype {request.kv_cache_dtype}")
    return BuildOptions(checkpoint_dir=request.checkpoint_dir, output_dir=request.output_dir,
                        kv_cache_dtype=KV_CACHE_DTYPE_OF_PB[request.kv_cache_dtype], **values)


def options_to_pb(options: BuildOptions, idempotency_key: str = "") -> pb.BuildRequest:
    values = {f.name: getattr(options, f.name) for f in fields(options)
              if f.name in SCALARS + PATHS and getattr(options, f.name) is not None}
    return pb.BuildRequest(kv_cache_dtype=PB_OF_KV_CACHE_DTYPE[options.kv_cache_dtype],
                           idempotency_key=idempotency_key, **values)
