"""Write one rank's safetensors file a group of tensors at a time.

`safetensors.torch.save_file` needs every tensor of the file in memory at
once; a tp1 rank is the whole model. `RankFileWriter` appends each tensor's
bytes to a scratch file as it comes, then writes the final file (header, then
the bytes copied in chunks) in save_file's own order: tensors sorted by dtype
alignment, largest first, then by name; the header is compact JSON padded with
spaces to a multiple of 8. The result is byte-identical to save_file's
(tests/services/converter/test_rank_file.py checks it).
"""

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from .artifacts import writing

CHUNK = 64 << 20
# safetensors' Dtype enum order (Rust derives Ord from it); save_file sorts descending.
DTYPE_CODES = {torch.bool: ("BOOL", 0), torch.uint8: ("U8", 4), torch.int8: ("I8", 5), torch.int16: ("I16", 9),
               torch.float16: ("F16", 11), torch.bfloat16: ("BF16", 12), torch.int32: ("I32", 13),
               torch.float32: ("F32", 15), torch.float64: ("F64", 17), torch.int64: ("I64", 18)}


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # in the scratch file
    nbytes: int

    @property
    def sort_key(self):
        return (-DTYPE_CODES[self.dtype][1], self.name)


class RankFileWriter:
    """`add(name, tensor)` any number of times, then `finish()` writes `path`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.scratch_path = self.path.with_name(self.path.name + ".scratch")
        self.scratch = open(self.scratch_path, "wb")
        self.entries: dict[str, Entry] = {}
        self.size = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self.entries:
            raise ValueError(f"tensor {name} written twice")
        data = tensor_bytes(tensor)
        with writing(self.scratch_path):
            self.scratch.write(data)
        self.entries[name] = Entry(name, tensor.dtype, tuple(tensor.shape), self.size, len(data))
        self.size += len(data)

    def add_all(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, tensor in tensors.items():
            self.add(name, tensor)

    def finish(self) -> None:
        with writing(self.scratch_path):
            self.scratch.close()
        ordered = sorted(self.entries.values(), key=lambda e: e.sort_key)
        with writing(self.path), open(self.scratch_path, "rb") as src, open(self.path, "wb") as out:
            out.write(header_bytes(ordered))
            for entry in ordered:
                copy_range(src, out, entry.offset, entry.nbytes)
            out.flush()
            os.fsync(out.fileno())
        os.remove(self.scratch_path)

    def abort(self) -> None:
        self.scratch.close()
        for p in (self.scratch_path, self.path):
            if p.exists():
                os.remove(p)


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes, little-endian, row-major (bfloat16 included)."""
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def header_bytes(ordered: list[Entry]) -> bytes:
    header, start = {}, 0
    for e in ordered:
        header[e.name] = {"dtype": DTYPE_CODES[e.dtype][0], "shape": list(e.shape),
                          "data_offsets": [start, start + e.nbytes]}
        start += e.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def copy_range(src, out, offset: int, nbytes: int) -> None:
    src.seek(offset)
    while nbytes:
        block = src.read(min(CHUNK, nbytes))
        out.write(block)
        nbytes -= len(block)
