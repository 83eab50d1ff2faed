"""The lazy HF checkpoint reader: sharded and single-file, its refusals, and errors of the
disk or the machine told apart from a bad checkpoint."""

import errno
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dbrx_serve.shared import hf_checkpoint
from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.hf_checkpoint import INDEX_FILE, HFCheckpoint
from dbrx_serve.shared.testing import TinySpec, save_tiny_model

SPEC = TinySpec(vocab_size=256, seed=7)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    path = tmp_path_factory.mktemp("single")
    hf = save_tiny_model(path, SPEC, tokenizer=False)
    return path, hf


def test_reads_single_and_sharded_files_alike(single, tmp_path):
    path, hf = single
    save_tiny_model(tmp_path, SPEC, tokenizer=False, max_shard_size="20KB")
    assert (tmp_path / INDEX_FILE).is_file() and not (path / INDEX_FILE).exists()
    with HFCheckpoint(path) as one, HFCheckpoint(tmp_path) as many:
        assert len(set(many.file_of.values())) > 1
        for name, expected in hf.state_dict().items():
            assert torch.equal(one.get(name), expected) and torch.equal(many.get(name), expected)


def broken_copy(src, dst, edit):
    """Copy a single-file checkpoint, passing its tensors through `edit` first."""
    for f in ("config.json",):
        (dst / f).write_text((src / f).read_text())
    tensors = load_file(src / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors")
    return HFCheckpoint(dst)


def test_missing_tensor_is_named(single, tmp_path):
    ckpt = broken_copy(single[0], tmp_path, lambda t: t.pop("transformer.blocks.1.ffn.experts.mlp.w2"))
    with pytest.raises(InvalidInput, match="transformer.blocks.1.ffn.experts.mlp.w2 is missing"):
        ckpt.get("transformer.blocks.1.ffn.experts.mlp.w2")


def test_wrong_shape_is_named(single, tmp_path):
    name = "transformer.blocks.0.norm_attn_norm.attn.Wqkv.weight"
    ckpt = broken_copy(single[0], tmp_path, lambda t: t.__setitem__(name, t[name][:-1].contiguous()))
    with pytest.raises(InvalidInput, match=r"Wqkv.weight in model.safetensors has shape \(127, 64\), expected"):
        ckpt.get(name)


def test_nan_or_inf_is_refused(single, tmp_path):
    name = "lm_head.weight"

    def poison(t):
        t[name] = t[name].clone()
        t[name][3, 4] = float("inf")
    ckpt = broken_copy(single[0], tmp_path, poison)
    with pytest.raises(InvalidInput, match="lm_head.weight in model.safetensors holds NaN or Inf"):
        ckpt.get(name)


def test_no_weights_or_broken_index(single, tmp_path):
    (tmp_path / "config.json").write_text((single[0] / "config.json").read_text())
    with pytest.raises(InvalidInput, match="no \\*.safetensors weights"):
        HFCheckpoint(tmp_path)
    (tmp_path / INDEX_FILE).write_text(json.dumps({"weight_map": {"lm_head.weight": "gone.safetensors"}}))
    with pytest.raises(InvalidInput, match="gone.safetensors is named in"):
        HFCheckpoint(tmp_path).get("lm_head.weight")


def test_a_file_safetensors_cannot_parse_is_bad_input(single, tmp_path):
    (tmp_path / "config.json").write_text((single[0] / "config.json").read_text())
    whole = (single[0] / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(InvalidInput, match="model.safetensors: not valid safetensors"):
        HFCheckpoint(tmp_path)


@pytest.mark.parametrize("error", [OSError(errno.EIO, "Input/output error"), MemoryError()], ids=["EIO", "no-memory"])
def test_an_error_of_the_disk_or_the_machine_is_raised_as_itself_naming_the_file(single, monkeypatch, error):
    """What safetensors raises when the disk or the machine fails (a real one: the job test in
    tests/services/converter/test_converter_faults.py) is no bad checkpoint: it is not InvalidInput,
    which would fail a job for good, but itself, for the job to retry, with the file noted."""
    def failing_open(path, framework):
        raise error
    monkeypatch.setattr(hf_checkpoint, "safe_open", failing_open)
    with pytest.raises(type(error)) as raised:
        HFCheckpoint(single[0])
    assert raised.value is error and not isinstance(raised.value, InvalidInput)
    assert raised.value.__notes__ == [f"while reading {single[0] / 'model.safetensors'}"]


def test_tiny_models_are_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    save_tiny_model(a, SPEC)
    save_tiny_model(b, SPEC)
    for f in ("model.safetensors", "tiny_bpe.tiktoken", "config.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes()
