"""INT8 KV cache: the engine gets kv_cache_dtype int8 and the checkpoint's
per-layer K and V scales (or, from a TensorRT-LLM checkpoint, its
kv_cache_scaling_factor for both); the factor tensors stay out of the rank
files, which still load with strict=True."""

import json

import pytest

from dbrx_serve.services.builder.build import build
from dbrx_serve.services.builder.options import BuildOptions
from dbrx_serve.services.converter.convert import convert
from dbrx_serve.services.converter.options import ConvertOptions
from dbrx_serve.shared.errors import InvalidInput

from .conftest import copy_without_manifest, read_engine, read_ranks, run_build
from .test_build_float import engine_model

FLAGS = dict(tp_size=2, pp_size=2, int8_kv_cache=True, calib_size=2, dtype="float32")


@pytest.fixture(scope="module")
def kv_checkpoint(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("kv") / "ckpt"
    convert(ConvertOptions(str(tiny_model_dir), str(out), **FLAGS))
    return out


def factors(ckpt) -> list[float]:
    """kv_cache_scaling_factor per global layer (tp rank 0 of each pipeline stage)."""
    ranks = read_ranks(ckpt, 4)
    return [float(ranks[r]["transformer.layers.0.attention.kv_cache_scaling_factor"]) for r in (0, 2)]


def test_int8_kv_engine_takes_the_checkpoint_scales(kv_checkpoint, tmp_path):
    engine = run_build(kv_checkpoint, tmp_path / "engine")
    config, ranks = read_engine(engine)
    assert config["build_config"]["kv_cache_dtype"] == "int8"
    assert json.loads((engine / "kv_cache_scales.json").read_text()) == \
        json.loads((kv_checkpoint / "kv_cache_scales.json").read_text())
    for rank, tensors in enumerate(ranks):
        assert not any(name.endswith("kv_cache_scaling_factor") for name in tensors)
        engine_model(config, tensors, rank)


def test_trtllm_int8_kv_checkpoint_gets_scales_from_its_factors(kv_checkpoint, tmp_path):
    ckpt = copy_without_manifest(kv_checkpoint, tmp_path / "trtllm", lambda c: c.pop("dbrx_serve"))
    (ckpt / "kv_cache_scales.json").unlink()
    engine = run_build(ckpt, tmp_path / "engine")
    layers = json.loads((engine / "kv_cache_scales.json").read_text())["layers"]
    assert layers == [{"k": f, "v": f} for f in factors(ckpt)]


def test_model_dtype_kv_cache_when_asked(kv_checkpoint, tmp_path):
    engine = run_build(kv_checkpoint, tmp_path / "engine", kv_cache_dtype="model")
    assert read_engine(engine)[0]["build_config"]["kv_cache_dtype"] == "model"
    assert not (engine / "kv_cache_scales.json").exists()


def test_int8_kv_refused_without_calibration(checkpoints, tmp_path):
    with pytest.raises(InvalidInput, match="--int8_kv_cache"):
        build(BuildOptions(str(checkpoints()), str(tmp_path / "engine"), kv_cache_dtype="int8"))


def test_bad_scales_file_is_refused(kv_checkpoint, tmp_path):
    ckpt = copy_without_manifest(kv_checkpoint, tmp_path / "bad")
    (ckpt / "kv_cache_scales.json").write_text(json.dumps({"layers": [{"k": 1.0, "v": -1.0}, {"k": 1, "v": 1}]}))
    with pytest.raises(InvalidInput, match="layer 0 needs positive finite"):
        run_build(ckpt, tmp_path / "engine")
