"""ConvertOptions: convert_checkpoint.py's defaults, and refusals before any work."""

import pytest

from dbrx_serve.services.converter.options import ConvertOptions
from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.mapping import Mapping


def test_defaults_and_mapping_rules():
    options = ConvertOptions("/m", "/o", tp_size=8)
    assert options.mapping == Mapping(tp_size=8, pp_size=1, moe_tp_size=8, moe_ep_size=1)
    assert ConvertOptions("/m", "/o", tp_size=8, moe_ep_size=2).mapping == Mapping(8, 1, 4, 2)
    assert ConvertOptions("/m", "/o", tp_size=8, moe_tp_size=2).mapping == Mapping(8, 1, 2, 4)
    assert options.dtype is None and options.weight_only is None  # precision has no effect alone
    assert not ConvertOptions("/m", "/o", use_weight_only=True, quantize_at_build=True).quantize_now
    assert ConvertOptions("/m", "/o", use_weight_only=True, weight_only_precision="int4").weight_only.quant_algo \
        == "W4A16"
    grouped = ConvertOptions("/m", "/o", use_weight_only=True, weight_only_precision="int4", group_size=64)
    assert (grouped.weight_only.quant_algo, grouped.weight_only.group_size) == ("W4A16_GPTQ", 64)


def test_dict_round_trip_and_unknown_keys():
    options = ConvertOptions("/m", "/o", tp_size=2, int8_kv_cache=True, calib_size=3)
    assert ConvertOptions.from_dict(options.to_dict()) == options
    with pytest.raises(InvalidInput, match="unknown convert option\\(s\\) tp; known: "):
        ConvertOptions.from_dict({**options.to_dict(), "tp": 2})


@pytest.mark.parametrize("values,match", [
    (dict(model_dir=""), "model_dir is required"),
    (dict(tp_size=0), "tp_size must be a positive integer, got 0"),
    (dict(tp_size=6, moe_ep_size=4), "moe_ep_size 4 does not divide tp_size 6"),
    (dict(logits_dtype="bfloat16"), "unknown logits_dtype 'bfloat16': choose one of float32, float16"),
    (dict(int8_kv_cache=True, calib_size=0), "calib_size must be a positive integer, got 0"),
    (dict(calib_dataset="/d.jsonl"), "only apply with --int8_kv_cache"),
    (dict(group_size=128), "--group_size needs --use_weight_only --weight_only_precision int4"),
    (dict(use_weight_only=True, group_size=128), "group_size applies to int4 weight-only only, not int8"),
    (dict(use_weight_only=True, weight_only_precision="int4", group_size=32),
     "group_size 32 is not supported: choose one of 64, 128"),
])
def test_refusals_name_the_numbers(values, match):
    with pytest.raises(InvalidInput, match=match):
        ConvertOptions(**{"model_dir": "/m", "output_dir": "/o", **values})
