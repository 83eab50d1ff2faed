"""Weight-only int8 / int4 exactly as docs/trtllm-checkpoint.md says."""

import pytest
import torch

from dbrx_serve.shared.quantization import (dequantize_weight, pack_int4, quantize_tensors,
                                                    quantize_weight, scheme, scheme_of, unpack_int4)
from dbrx_serve.shared.errors import InvalidInput

BOUND = {"int8": 254, "int4": 14}  # |dequantized - w| <= amax / BOUND per output column


def weight(*shape, seed=0) -> torch.Tensor:
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return w * torch.rand(shape[:-1] + (1,), generator=torch.Generator().manual_seed(seed + 1)) * 3  # varied rows


@pytest.mark.parametrize("precision", ["int8", "int4"])
@pytest.mark.parametrize("shape", [(48, 64), (3, 32, 16)])
def test_dequantized_within_amax_over_254_or_14_per_column(precision, shape):
    w = weight(*shape)
    q, scale = quantize_weight(w, precision)
    back = dequantize_weight(q, scale, precision)  # [.., out, in]
    amax = w.abs().amax(dim=-1, keepdim=True)  # per output channel (row of [out, in])
    err = (back - w).abs()
    assert (err <= amax / BOUND[precision] * (1 + 1e-6)).all()
    assert torch.allclose(scale, (amax / (127 if precision == "int8" else 7)).squeeze(-1))


@pytest.mark.parametrize("precision,bits,qmax", [("int8", 8, 127), ("int4", 4, 7)])
def test_layout_shapes_and_dtypes(precision, bits, qmax):
    w = weight(4, 32, 16).bfloat16()  # [El, out, in]
    q, scale = quantize_weight(w, precision)
    assert q.dtype == torch.int8 and q.shape == (4, 16, 32 * bits // 8)  # [El, in, out*b/8]
    assert scale.dtype == torch.bfloat16 and scale.shape == (4, 32)
    values = unpack_int4(q) if bits == 4 else q
    assert values.abs().max() == qmax  # the largest weight of a column maps to +-qmax


def test_values_are_round_of_w_over_the_stored_scale():
    w = weight(8, 6).half()
    q, scale = quantize_weight(w, "int8")
    expected = torch.round(w.float().T / scale.float()).clamp(-127, 127)
    assert torch.equal(q.float(), expected)


def test_int4_packing_low_nibble_first_twos_complement():
    q = torch.tensor([[1, -1, -7, 7, 0, -8]], dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.view(torch.uint8).tolist() == [[0xF1, 0x79, 0x80]]
    assert torch.equal(unpack_int4(packed), q)


def test_zero_column_gets_scale_one():
    w = torch.zeros(3, 5)
    w[1] = torch.arange(5.0)
    q, scale = quantize_weight(w, "int8")
    assert torch.equal(scale, torch.tensor([1.0, 4 / 127, 1.0])) and not q[:, 0].any()


def test_only_the_four_gemm_weights_change():
    group = {"transformer.layers.0.attention.qkv.weight": weight(16, 8), "lm_head.weight": weight(10, 8),
             "transformer.layers.0.mlp.router.weight": weight(4, 8), "transformer.layers.0.mlp.fc.weight": weight(2, 8, 8)}
    out = quantize_tensors(group, scheme("int4"))
    assert out["lm_head.weight"] is group["lm_head.weight"]
    assert out["transformer.layers.0.mlp.router.weight"] is group["transformer.layers.0.mlp.router.weight"]
    assert out["transformer.layers.0.attention.qkv.weight"].shape == (8, 8)
    assert out["transformer.layers.0.attention.qkv.per_channel_scale"].shape == (16,)
    assert out["transformer.layers.0.mlp.fc.per_channel_scale"].shape == (2, 8)


def test_unknown_precision_and_odd_int4_columns_refused():
    with pytest.raises(InvalidInput, match="int2.*int8, int4"):
        quantize_weight(weight(4, 4), "int2")
    with pytest.raises(InvalidInput, match="even number of output columns, got 3"):
        quantize_weight(weight(3, 4), "int4")


@pytest.mark.parametrize("group_size", [64, 128])
@pytest.mark.parametrize("shape", [(48, 256), (3, 32, 256)])
def test_group_wise_int4_scales_each_group_of_input_rows(group_size, shape):
    """weights_scaling_factor [.., in/g, out] = amax/7 over each group; error <= group amax / 14."""
    w = weight(*shape).bfloat16()
    q, scale = quantize_weight(w, "int4", group_size)
    *lead, out, rows = shape
    assert q.shape == (*lead, rows, out // 2) and scale.shape == (*lead, rows // group_size, out)
    assert scale.dtype == torch.bfloat16
    groups = w.float().unflatten(-1, (-1, group_size))  # [.., out, G, g]
    amax = groups.abs().amax(-1)  # [.., out, G]
    assert torch.equal(scale, (amax / 7).bfloat16().transpose(-1, -2))
    back = dequantize_weight(q, scale, "int4").unflatten(-1, (-1, group_size))  # [.., out, G, g]
    assert ((back - groups).abs() <= amax.unsqueeze(-1) / 14 * 1.01).all()  # the bf16 scale rounds


def test_group_wise_dequantize_uses_each_group_s_scale():
    q = pack_int4(torch.tensor([[1, 2], [3, 4], [5, 6], [7, -7]], dtype=torch.int8))  # [in 4, out 2]
    scale = torch.tensor([[1.0, 10.0], [0.5, 2.0]])  # [in/2, out]: groups of 2 rows
    assert torch.equal(dequantize_weight(q, scale, "int4"), torch.tensor([[1.0, 3.0, 2.5, 3.5],
                                                                          [20.0, 40.0, 12.0, -14.0]]))


def test_group_wise_names_and_config():
    s = scheme("int4", 128)
    out = quantize_tensors({"transformer.layers.0.mlp.proj.weight": weight(2, 8, 256)}, s)
    assert out["transformer.layers.0.mlp.proj.weights_scaling_factor"].shape == (2, 2, 8)
    assert "transformer.layers.0.mlp.proj.per_channel_scale" not in out
    config = {**s.config(), "kv_cache_quant_algo": None}
    assert config["quant_algo"] == "W4A16_GPTQ" and config["group_size"] == 128 and not config["has_zero_point"]
    assert scheme_of(config) == s and scheme_of({"quant_algo": "W4A16"}) == scheme("int4")
    assert scheme_of(None) is None and scheme_of({"quant_algo": None}) is None


@pytest.mark.parametrize("quantization, match", [
    ({"quant_algo": "W4A16_GPTQ"}, "W4A16_GPTQ needs quantization.group_size"),
    ({"quant_algo": "W4A16_GPTQ", "group_size": 128, "has_zero_point": True}, "zero points"),
    ({"quant_algo": "W4A16_GPTQ", "group_size": 32}, "group_size 32 is not supported: choose one of 64, 128"),
    ({"quant_algo": "W4A16_GPTQ", "group_size": 64.0}, "group_size 64.0 is not supported: choose one of 64, 128"),
    ({"quant_algo": "W4A16_AWQ", "group_size": 128}, "quant_algo 'W4A16_AWQ' is not supported"),
])
def test_unsupported_group_wise_configs_refused(quantization, match):
    with pytest.raises(InvalidInput, match=match):
        scheme_of(quantization)


def test_group_size_that_does_not_divide_the_input_refused():
    with pytest.raises(InvalidInput, match="group_size 64 does not divide the 96 input columns"):
        quantize_weight(weight(8, 96), "int4", 64)
