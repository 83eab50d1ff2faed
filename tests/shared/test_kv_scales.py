"""One KVScales for converter, builder and runtime: read from kv_cache_scales.json,
checked the same way everywhere (NaN, Inf, zero, negative or a missing layer refused)."""

import json
import math

import pytest

from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.kv_scales import KVScales


def test_json_round_trip_keeps_scales_and_calibration():
    scales = KVScales((0.5, 0.25), (1.0, 2.0), {"dataset": "x", "samples": 3}, trtllm=(0.75, 0.5))
    again = KVScales.from_json(json.loads(json.dumps(scales.to_json())), 2, "here")
    assert (again.k, again.v, again.calibration) == (scales.k, scales.v, scales.calibration)
    assert again.trtllm is None  # TensorRT-LLM's factors live in the rank files, not in the JSON


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0.0, -1.0, "1.0", None, True])
def test_a_scale_that_is_not_positive_and_finite_is_refused(bad, tmp_path):
    path = tmp_path / "kv_cache_scales.json"
    path.write_text(json.dumps({"layers": [{"k": 1.0, "v": 1.0}, {"k": bad, "v": 1.0}]}))  # NaN/Infinity as JS
    with pytest.raises(InvalidInput, match="layer 1 needs positive finite 'k' and 'v' scales"):
        KVScales.read(path, 2)


@pytest.mark.parametrize("value", [{"layers": [{"k": 1, "v": 1}]}, {"layers": "all"}, {}])
def test_a_wrong_number_of_layers_is_refused(value, tmp_path):
    path = tmp_path / "kv_cache_scales.json"
    path.write_text(json.dumps(value))
    with pytest.raises(InvalidInput, match="expected a 'layers' list of 2"):
        KVScales.read(path, 2)


def test_a_missing_file_says_what_it_is_for(tmp_path):
    with pytest.raises(InvalidInput, match="kv_cache_scales.json is missing: an int8 KV cache needs its scales"):
        KVScales.read(tmp_path / "kv_cache_scales.json", 2)
