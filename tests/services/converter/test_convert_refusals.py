"""Bad input is refused with a clear InvalidInput, and nothing is half-written:
no output directory, no temporary sibling. Cancelling mid-way leaves nothing either."""

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from dbrx_serve.services.converter.convert import convert
from dbrx_serve.services.converter.options import ConvertOptions
from dbrx_serve.shared.errors import Cancelled, InvalidInput
from dbrx_serve.shared.jobstore import LeaseLost

from .conftest import leftovers, run_convert

LAYER1_W2 = "transformer.blocks.1.ffn.experts.mlp.w2"


def copy_model(shard_model, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(shard_model[0], model_dir)
    return model_dir


def edit_tensor(model_dir, name: str, change) -> None:
    """Rewrite the shard holding `name` with change(tensors) applied."""
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    shard = model_dir / index["weight_map"][name]
    tensors = load_file(shard)
    change(tensors)
    save_file(tensors, shard, metadata={"format": "pt"})


def refused(model_dir, out, match: str, **flags) -> None:
    with pytest.raises(InvalidInput, match=match):
        run_convert(model_dir, out, **flags)
    assert leftovers(out) == []


def test_output_overlapping_the_model_is_refused_and_the_model_kept(shard_model, tmp_path):
    """--overwrite must never replace (delete) the HF model being converted."""
    model = shard_model[0]
    before = sorted(p.name for p in model.iterdir())
    for out in (model, model / "ckpt", model.parent):
        with pytest.raises(InvalidInput, match="overlaps the input"):
            run_convert(model, out, overwrite=True)
    assert sorted(p.name for p in model.iterdir()) == before


@pytest.mark.parametrize("workers", [1, 2])
def test_nan_in_a_late_layer_fails_and_leaves_nothing(workers, shard_model, tmp_path):
    """NaN is only seen when the tensor is read, after other ranks were written."""
    model_dir = copy_model(shard_model, tmp_path)
    edit_tensor(model_dir, LAYER1_W2, lambda t: t[LAYER1_W2].view(-1)[5].fill_(float("nan")))
    refused(model_dir, tmp_path / "out", f"tensor {LAYER1_W2} in .* holds NaN or Inf", tp_size=2, workers=workers)


def test_inf_refused(shard_model, tmp_path):
    model_dir = copy_model(shard_model, tmp_path)
    name = "lm_head.weight"
    edit_tensor(model_dir, name, lambda t: t[name].view(-1)[0].fill_(float("inf")))
    refused(model_dir, tmp_path / "out", "tensor lm_head.weight in .* holds NaN or Inf")


def test_missing_tensor_refused(shard_model, tmp_path):
    model_dir = copy_model(shard_model, tmp_path)
    edit_tensor(model_dir, LAYER1_W2, lambda t: t.pop(LAYER1_W2))
    refused(model_dir, tmp_path / "out", f"tensor {LAYER1_W2} is missing")


def test_wrong_shape_refused(shard_model, tmp_path):
    model_dir = copy_model(shard_model, tmp_path)
    edit_tensor(model_dir, LAYER1_W2, lambda t: t.__setitem__(LAYER1_W2, t[LAYER1_W2][:-1].clone()))
    refused(model_dir, tmp_path / "out", rf"tensor {LAYER1_W2} in .* has shape \(127, 64\), expected \(128, 64\)")


def test_config_missing_or_not_dbrx(shard_model, tmp_path):
    model_dir = copy_model(shard_model, tmp_path)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").unlink()
    refused(model_dir, tmp_path / "out", "config.json is missing")
    (model_dir / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    refused(model_dir, tmp_path / "out", "not a DBRX config: model_type is 'llama'")


@pytest.mark.parametrize("flags,match", [
    (dict(tp_size=8), "tp_size 8 does not divide the 4 attention heads"),
    (dict(tp_size=8, moe_ep_size=8), "moe_ep_size 8 does not divide the 4 experts"),
    (dict(tp_size=2, moe_tp_size=2, moe_ep_size=2), "moe_tp_size 2 x moe_ep_size 2 must equal tp_size 2"),
    (dict(tp_size=4, moe_tp_size=3), "moe_tp_size 3 does not divide tp_size 4"),
    (dict(pp_size=4), "pp_size 4 exceeds the 3 layers"),
    (dict(dtype="float8"), "unknown dtype 'float8': choose one of float32, float16, bfloat16"),
    (dict(use_weight_only=True, weight_only_precision="int2"), "weight_only_precision 'int2'"),
    (dict(quantize_at_build=True), "--quantize_at_build needs --use_weight_only"),
    (dict(use_weight_only=True, weight_only_precision="int4", group_size=128),
     "--group_size 128 does not divide the input width 64 of attention.qkv and mlp.fc"),
    (dict(use_weight_only=True, weight_only_precision="int4", group_size=64),
     "--group_size 64 does not divide the input width 32 of mlp.proj"),
    (dict(calib_size=4), "only apply with --int8_kv_cache"),
    (dict(workers=0), "workers must be a positive integer, got 0"),
])
def test_bad_options_refused_before_any_work(flags, match, shard_model, tmp_path):
    refused(shard_model[0], tmp_path / "out", match, **flags)


def test_output_path_that_is_a_file_refused(shard_model, tmp_path):
    (tmp_path / "out").write_text("not a directory")
    with pytest.raises(InvalidInput, match="exists and is not a directory"):
        run_convert(shard_model[0], tmp_path / "out")
    assert (tmp_path / "out").read_text() == "not a directory"


def test_non_empty_output_refused_unless_overwrite(shard_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(InvalidInput, match="not empty: pass --overwrite"):
        run_convert(shard_model[0], out)
    run_convert(shard_model[0], out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "rank0.safetensors").is_file()
    assert leftovers(out) == ["out"]


@pytest.mark.parametrize("workers", [1, 2])
def test_cancel_between_groups_leaves_nothing(workers, shard_model, tmp_path):
    seen = []

    def check():
        if len(seen) >= 3:
            raise Cancelled("job was cancelled")

    out = tmp_path / "out"
    options = ConvertOptions(str(shard_model[0]), str(out), tp_size=2, pp_size=2, workers=workers)
    with pytest.raises(Cancelled):
        convert(options, progress=lambda fraction, message: seen.append((fraction, message)), check=check)
    assert 3 <= len(seen) < 8 and leftovers(out) == []


def test_progress_reaches_one_in_steps(shard_model, tmp_path):
    seen = []
    convert(ConvertOptions(str(shard_model[0]), str(tmp_path / "out"), pp_size=2),
            progress=lambda fraction, message: seen.append((fraction, message)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [m for _, m in seen] == ["rank 0: embedding", "rank 0: layer 0", "rank 0: layer 1",
                                    "rank 1: layer 2", "rank 1: head", "publishing"]


def test_a_refusal_at_publishing_keeps_the_old_output(shard_model, tmp_path):
    """The last report comes after every file is written, right before the rename: a job
    worker that lost its lease by then (LeaseLost here) must not replace the output."""
    out = tmp_path / "out"
    convert(ConvertOptions(str(shard_model[0]), str(out)))
    before = (out / "manifest.json").read_bytes()

    def progress(fraction, message):
        if message == "publishing":
            raise LeaseLost("this worker lost its lease")
    with pytest.raises(LeaseLost):
        convert(ConvertOptions(str(shard_model[0]), str(out), tp_size=2, overwrite=True), progress=progress)
    assert leftovers(out) == ["out"] and (out / "manifest.json").read_bytes() == before
