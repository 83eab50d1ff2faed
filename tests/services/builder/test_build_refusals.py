"""Bad input gets a clear error before any work, and nothing is left behind:
tampered or truncated checkpoints, wrong tensors, limits that do not fit,
output paths; a failure or a cancel mid-build removes the temporary output."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from dbrx_serve.services.builder.build import build
from dbrx_serve.services.builder.options import BuildOptions
from dbrx_serve.shared.errors import Cancelled, InvalidInput

from .conftest import copy_without_manifest, leftovers, run_build

QKV = "transformer.layers.1.attention.qkv.weight"


def refused(checkpoint_dir, output_dir, match: str, **flags) -> None:
    with pytest.raises(InvalidInput, match=match):
        run_build(checkpoint_dir, output_dir, **flags)
    assert leftovers(output_dir) == []


def copy(checkpoint_dir, target):
    shutil.copytree(checkpoint_dir, target)
    return target


def test_tampered_byte_is_refused_naming_the_file(checkpoints, tmp_path):
    ckpt = copy(checkpoints(tp_size=2), tmp_path / "ckpt")
    path = ckpt / "rank1.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    refused(ckpt, tmp_path / "engine", r"rank1\.safetensors does not match the sha256")


def test_truncated_rank_file_is_refused(checkpoints, tmp_path):
    ckpt = copy(checkpoints(), tmp_path / "ckpt")
    path = ckpt / "rank0.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    refused(ckpt, tmp_path / "engine", r"rank0\.safetensors has \d+ bytes, the manifest says")


def test_truncated_rank_file_without_manifest_is_refused(checkpoints, tmp_path):
    ckpt = copy_without_manifest(checkpoints(), tmp_path / "ckpt")
    path = ckpt / "rank0.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    refused(ckpt, tmp_path / "engine", r"rank0\.safetensors has \d+ bytes but its header describes .* truncated")


def test_missing_rank_file_is_refused(checkpoints, tmp_path):
    ckpt = copy_without_manifest(checkpoints(tp_size=2), tmp_path / "ckpt")
    (ckpt / "rank1.safetensors").unlink()
    refused(ckpt, tmp_path / "engine", r"rank1\.safetensors is missing")


def rewrite(path, edit) -> None:
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.pop(QKV), rf"rank0\.safetensors: tensor {QKV} is missing"),
    (lambda t: t.update({QKV: t[QKV][:-1].clone()}), rf"tensor {QKV} is float32 \[127, 64\], expected float32 \[128, 64\]"),
    (lambda t: t.update({QKV: t[QKV].half()}), rf"tensor {QKV} is float16 .* expected float32"),
    (lambda t: t.update({"transformer.layers.9.extra": torch.zeros(1)}), r"unexpected tensor transformer\.layers\.9"),
], ids=["missing", "shape", "dtype", "extra"])
def test_wrong_tensors_are_refused_naming_file_and_tensor(edit, match, checkpoints, tmp_path):
    ckpt = copy_without_manifest(checkpoints(), tmp_path / "ckpt")
    rewrite(ckpt / "rank0.safetensors", edit)
    refused(ckpt, tmp_path / "engine", match)


@pytest.mark.parametrize("workers", [1, 2])
def test_non_finite_weights_are_refused_and_nothing_is_left(workers, checkpoints, tmp_path):
    ckpt = copy_without_manifest(checkpoints(tp_size=2), tmp_path / "ckpt")
    rewrite(ckpt / "rank1.safetensors", lambda t: t[QKV].__setitem__((3, 5), float("nan")))
    refused(ckpt, tmp_path / "engine", rf"rank1\.safetensors: tensor {QKV} holds NaN or infinite values",
            workers=workers)


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.update(architecture="LlamaForCausalLM"), "architecture is 'LlamaForCausalLM'"),
    (lambda c: c["quantization"].update(quant_algo="FP8"), "quant_algo 'FP8' is not supported"),
    (lambda c: c["mapping"].update(world_size=3), "world_size 3"),
    (lambda c: c.pop("hidden_size"), "lacks the key 'hidden_size'"),
], ids=["architecture", "quant_algo", "world_size", "missing-key"])
def test_bad_config_is_refused(edit, match, checkpoints, tmp_path):
    ckpt = copy_without_manifest(checkpoints(), tmp_path / "ckpt", edit)
    refused(ckpt, tmp_path / "engine", match)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", tmp_path / "engine", r"config\.json is missing")
    refused(tmp_path / "nowhere", tmp_path / "engine", "does not exist")


@pytest.mark.parametrize("flags,match", [
    ({"max_num_tokens": 0}, "--max_num_tokens must be a positive integer"),
    ({"max_batch_size": 0}, "--max_batch_size must be a positive integer"),
    ({"max_input_len": -1}, "--max_input_len must be a positive integer"),
    ({"max_seq_len": 0}, "--max_seq_len must be a positive integer"),
    ({"tokens_per_block": 48}, "--tokens_per_block 48 must be a power of two"),
    ({"max_beam_width": 4}, "--max_beam_width 4 is not supported"),
    ({"kv_cache_type": "continuous"}, "unknown --kv_cache_type 'continuous'"),
    ({"kv_cache_dtype": "fp8"}, "unknown --kv_cache_dtype 'fp8'"),
    ({"gpt_attention_plugin": "fp8"}, "unknown --gpt_attention_plugin"),
    ({"context_fmha": "on"}, "unknown --context_fmha 'on': choose one of enable, disable"),
    ({"workers": 0}, "--workers must be a positive integer"),
], ids=lambda v: "-".join(map(str, v)) if isinstance(v, dict) else None)
def test_limits_that_do_not_fit_are_refused(flags, match, tmp_path):
    with pytest.raises(InvalidInput, match=match):
        BuildOptions(str(tmp_path), str(tmp_path / "engine"), **flags)


def test_max_input_len_is_clipped_and_max_num_tokens_bounded():
    limits = BuildOptions("c", max_input_len=4096, max_batch_size=2).limits(max_position_embeddings=1000)
    assert (limits.max_input_len, limits.max_seq_len, limits.max_num_tokens) == (1000, 1000, 2000)


def test_output_paths(checkpoints, tmp_path):
    ckpt = checkpoints()
    refused(ckpt, ckpt / "engine", "overlaps the input")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(InvalidInput, match="is not empty: pass --overwrite"):
        run_build(ckpt, tmp_path / "full")
    assert (tmp_path / "full" / "x").exists()
    run_build(ckpt, tmp_path / "full", overwrite=True)
    assert json.loads((tmp_path / "full" / "config.json").read_text())["build_config"]["backend"]
    assert not (tmp_path / "full" / "x").exists()


class StopAt:
    """A progress callback that raises at step `n` (a failure), or a check that cancels from then on."""

    def __init__(self, n: int, error: BaseException):
        self.n, self.error, self.steps = n, error, 0

    def progress(self, fraction: float, message: str) -> None:
        self.steps += 1
        if self.steps == self.n:
            raise self.error

    def check(self) -> None:
        if self.steps >= self.n:
            raise self.error


@pytest.mark.parametrize("workers", [1, 2])
def test_cancel_mid_build_leaves_nothing(workers, checkpoints, tmp_path):
    stop = StopAt(3, Cancelled("cancelled by the test"))
    with pytest.raises(Cancelled):
        build(BuildOptions(str(checkpoints(tp_size=2)), str(tmp_path / "engine"), workers=workers),
              progress=lambda f, m: setattr(stop, "steps", stop.steps + 1), check=stop.check)
    assert stop.steps >= 3 and leftovers(tmp_path / "engine") == []


def test_failure_mid_build_leaves_nothing(checkpoints, tmp_path):
    stop = StopAt(4, RuntimeError("disk full"))
    with pytest.raises(RuntimeError, match="disk full"):
        build(BuildOptions(str(checkpoints(tp_size=2)), str(tmp_path / "engine")), progress=stop.progress)
    assert leftovers(tmp_path / "engine") == []


def test_a_refusal_at_publishing_leaves_nothing(checkpoints, tmp_path):
    """Every rank written, then the last report (a job worker's lease check) refuses: no engine."""
    seen = []

    def progress(fraction, message):
        seen.append(message)
        if message == "publishing":
            raise Cancelled("cancelled at the last moment")
    with pytest.raises(Cancelled):
        build(BuildOptions(str(checkpoints(tp_size=2)), str(tmp_path / "engine")), progress=progress)
    assert seen[-2:] == ["config and tokenizer written", "publishing"]
    assert leftovers(tmp_path / "engine") == []
