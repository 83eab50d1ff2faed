"""Weight-only int8 / int4 exactly as docs/trtllm-checkpoint.md says."""

import pytest
import torch

from dbrx_serve.shared.quantization import (dequantize_weight, pack_int4, quantize_tensors,
                                                    quantize_weight, scheme, unpack_int4)
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
