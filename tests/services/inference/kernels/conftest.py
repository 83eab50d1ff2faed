"""The Triton kernels, compiled on a CUDA GPU or run by Triton's interpreter on
the CPU (tests/conftest.py sets TRITON_INTERPRET=1 where no GPU is). The
interpreter multiplies bfloat16 wrongly in `tl.dot` (Triton 3.6), so on the CPU
the kernels are checked in float32 and float16; on a GPU in bfloat16 too."""

import pytest
import torch

pytest.importorskip("triton")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])
# Bounds on max |ours - plain| / max |plain| (the plain path rounds at other places).
BOUND = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}


@pytest.fixture
def device() -> torch.device:
    return DEVICE


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    assert not torch.isnan(got).any(), "NaN in the kernel's output"
    return float((got.float() - want.float()).abs().max() / want.float().abs().max())
