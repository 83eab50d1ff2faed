"""A rank file's table of contents, from its safetensors header alone (no
tensor is read): names, dtypes and shapes, with the file's size checked
against the header, so a truncated file is named before any work. The
builder reads checkpoints with it; the runtime's quick engine check too."""

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from dbrx_serve.shared.errors import InvalidInput, shown

MAX_HEADER_BYTES = 100 << 20
REWRITE = "write it again (dbrx convert or dbrx build)"
DTYPES = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
          "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
          "F64": torch.float64}


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Every tensor of a safetensors file; InvalidInput naming the file when it is not whole."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        length = _header_length(path, f.read(8), size)
        header = _parse(path, f.read(length))
    entries = {name: _entry(path, name, value) for name, value in header.items() if name != "__metadata__"}
    data_end = max((end for _, end in (header[n]["data_offsets"] for n in entries)), default=0)
    if 8 + length + data_end != size:
        raise InvalidInput(f"{path} has {size} bytes but its header describes {8 + length + data_end}: "
                           "the file is truncated or corrupt; " + REWRITE)
    return entries


def _header_length(path: Path, prefix: bytes, size: int) -> int:
    if len(prefix) < 8:
        raise InvalidInput(f"{path} is not a safetensors file ({size} bytes): " + REWRITE)
    (length,) = struct.unpack("<Q", prefix)
    if length > min(MAX_HEADER_BYTES, size - 8):
        raise InvalidInput(f"{path} is truncated or not a safetensors file (header length {length}, "
                           f"file size {size}): " + REWRITE)
    return length


def _parse(path: Path, data: bytes) -> dict:
    try:
        header = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidInput(f"{path}: the safetensors header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise InvalidInput(f"{path}: the safetensors header is not a JSON object")
    return header


def _entry(path: Path, name: str, value) -> TensorInfo:
    """One tensor's entry, its shape checked against the bytes it claims (a header may claim a
    tensor far larger than its data, which a reader would then allocate)."""
    try:
        dtype, shape, (start, end) = DTYPES[value["dtype"]], tuple(value["shape"]), value["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise InvalidInput(f"{path}: tensor {shown(name)} has a malformed header entry {shown(value)}") from None
    if not all(_natural(n) for n in (*shape, start, end)) or start > end:
        raise InvalidInput(f"{path}: tensor {shown(name)} has a malformed header entry {shown(value)}")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != end - start:
        raise InvalidInput(f"{path}: tensor {shown(name)} claims shape {shown(list(shape))} of {value['dtype']} "
                           f"({nbytes} bytes) but its data holds {end - start} bytes: the file is corrupt; " + REWRITE)
    return TensorInfo(dtype, shape, nbytes)


def _natural(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
