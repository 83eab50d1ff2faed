"""A safetensors header is read alone and checked against its file: every tensor's shape must
account for exactly the bytes its offsets give it, so a header claiming a huge tensor (which a
reader would allocate) or a malformed entry is refused naming the file and the tensor."""

import json
import struct

import pytest
import torch

from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.safetensors_header import TensorInfo, read_header


def write_safetensors(path, entries: dict, data: bytes):
    header = json.dumps({"__metadata__": {"format": "pt"}, **entries}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def test_a_header_that_matches_its_data_is_read(tmp_path):
    path = write_safetensors(tmp_path / "ok.safetensors", {"w": {"dtype": "F32", "shape": [2, 2],
                                                                 "data_offsets": [0, 16]}}, b"\0" * 16)
    assert read_header(path) == {"w": TensorInfo(torch.float32, (2, 2), 16)}


@pytest.mark.parametrize("entry,match", [
    ({"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 16]},
     r"claims shape \[1099511627776, 1099511627776\] of F32 \(4835703278458516698824704 bytes\) but its "
     r"data holds 16 bytes: the file is corrupt"),
    ({"dtype": "BF16", "shape": [3], "data_offsets": [0, 16]}, r"claims shape \[3\] of BF16 \(6 bytes\)"),
    ({"dtype": "F32", "shape": [-4, -1], "data_offsets": [0, 16]}, "has a malformed header entry"),
    ({"dtype": "F32", "shape": [4.0], "data_offsets": [0, 16]}, "has a malformed header entry"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}, "has a malformed header entry"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [-16, 0]}, "has a malformed header entry"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, True]}, "has a malformed header entry"),
    ({"dtype": "C64", "shape": [2], "data_offsets": [0, 16]}, "has a malformed header entry"),
])
def test_a_header_that_does_not_describe_its_data_is_refused(entry, match, tmp_path):
    path = write_safetensors(tmp_path / "bad.safetensors", {"w": entry}, b"\0" * 16)
    with pytest.raises(InvalidInput, match=f"bad.safetensors: tensor 'w' {match}"):
        read_header(path)


def test_a_truncated_file_is_refused(tmp_path):
    path = write_safetensors(tmp_path / "cut.safetensors", {"w": {"dtype": "F32", "shape": [4],
                                                                  "data_offsets": [0, 16]}}, b"\0" * 10)
    with pytest.raises(InvalidInput, match=r"cut.safetensors has \d+ bytes but its header describes \d+: the file "
                                           "is truncated or corrupt"):
        read_header(path)
