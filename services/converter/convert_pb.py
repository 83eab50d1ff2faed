"""ConvertRequest <-> ConvertOptions, the one place that knows both. Zero and
empty fields mean convert_checkpoint.py's defaults."""


from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.options import ANY_ABSOLUTE_PATH, PathPolicy
from dbrx_serve.shared.generated.dbrx.serve.v1 import common_pb2, converter_pb2 as pb

from .options import ConvertOptions

DTYPE_OF_PB = {common_pb2.D_TYPE_UNSPECIFIED: None, common_pb2.D_TYPE_FLOAT32: "float32",
               common_pb2.D_TYPE_FLOAT16: "float16", common_pb2.D_TYPE_BFLOAT16: "bfloat16"}
PB_OF_DTYPE = {name: value for value, name in DTYPE_OF_PB.items()}
PRECISION_OF_PB = {common_pb2.WEIGHT_ONLY_PRECISION_UNSPECIFIED: "int8",
                   common_pb2.WEIGHT_ONLY_PRECISION_INT8: "int8", common_pb2.WEIGHT_ONLY_PRECISION_INT4: "int4"}
PB_OF_PRECISION = {"int8": common_pb2.WEIGHT_ONLY_PRECISION_INT8, "int4": common_pb2.WEIGHT_ONLY_PRECISION_INT4}
OPTIONAL = ("tp_size", "pp_size", "moe_tp_size", "moe_ep_size", "calib_dataset", "calib_size", "workers",
            "group_size")
FLAGS = ("use_weight_only", "quantize_at_build", "int8_kv_cache", "overwrite")
PATHS = ("model_dir", "output_dir", "calib_dataset")


def options_from_pb(request: pb.ConvertRequest, paths: PathPolicy = ANY_ABSOLUTE_PATH) -> ConvertOptions:
    """The options a request asks for, its paths checked against the server's policy."""
    paths.check(request, PATHS, "converter")
    return ConvertOptions(
        model_dir=request.model_dir, output_dir=request.output_dir,
        dtype=_enum("dtype", DTYPE_OF_PB, request.dtype),
        logits_dtype=_enum("logits_dtype", DTYPE_OF_PB, request.logits_dtype) or "float32",
        weight_only_precision=_enum("weight_only_precision", PRECISION_OF_PB, request.weight_only_precision),
        **{name: getattr(request, name) for name in OPTIONAL if getattr(request, name)},
        **{name: getattr(request, name) for name in FLAGS})


def options_to_pb(options: ConvertOptions, idempotency_key: str = "") -> pb.ConvertRequest:
    values = {name: getattr(options, name) for name in OPTIONAL + FLAGS if getattr(options, name) is not None}
    return pb.ConvertRequest(
        model_dir=options.model_dir, output_dir=options.output_dir, dtype=PB_OF_DTYPE[options.dtype],
        logits_dtype=PB_OF_DTYPE[options.logits_dtype],
        weight_only_precision=PB_OF_PRECISION[options.weight_only_precision],
        idempotency_key=idempotency_key, **values)


def _enum(name: str, table: dict, value: int):
    if value not in table:
        raise InvalidInput(f"unknown {name} {value}: choose one of {', '.join(str(k) for k in table)}")
    return table[value]
