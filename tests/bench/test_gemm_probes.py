"""The GEMM probes' parts that run without a GPU: the warp-specialized Gluon kernel of
bench/ws_gemm_probe.py compiled for Hopper (sm_90) as the README's numbers were taken (the conversion's
layout change free, no spills, the partitions' register budgets), and bench/gemm_fixed_cost_probe.py's
line fit."""

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


def test_the_launch_cost_fit_recovers_a_line():
    from gemm_fixed_cost_probe import fit
    points = [(b, 4.8 + b / 3.63e6) for b in (66e6, 132e6, 264e6, 528e6)]  # us = 4.8 + bytes / (3.63 TB/s)
    assert fit(points) == {"intercept_us": 4.8, "rate_gbs": 3630.0}


@pytest.mark.parametrize("gated", [True, False], ids=["gate+up", "down"])
def test_the_warp_specialized_probe_compiles_for_hopper_without_spills(gated):
    """Its best variant (a program's 80 registers, 32 of them the producer warp's): the two partitions
    (setmaxnreg), wgmma from registers after a layout change the compiler proves free (the kernel asserts
    it: a change that moved data would not compile), no spills."""
    pytest.importorskip("triton.experimental.gluon")
    import triton
    from triton.backends.compiler import GPUTarget
    interpret = os.environ.get("TRITON_INTERPRET")  # tests/conftest.py's, on the CPU: gemm_sass drops it
    try:  # (it compiles for the GPU), and the probe's Gluon kernel must be compiled, not interpreted
        from gemm_sass import report
        from ws_gemm_probe import VARIANTS, source
    finally:
        if interpret is not None:  # the rest of the session's kernels keep running in the interpreter
            os.environ["TRITON_INTERPRET"] = interpret
    variant = VARIANTS[1]
    src = source(gated, 16, 128, variant["stages"], variant["worker_regs"])
    options = {"num_warps": 4, "maxnreg": variant["maxnreg"]}
    code = report(src, num_stages=1, **options)  # the machine code, by the Triton wheel's cuobjdump
    assert code["spill_instructions"] == 0 and code["registers"] <= variant["maxnreg"]
    assert code["wgmma"] == (16 if gated else 8)
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]
    assert re.search(rf"setmaxnreg\.inc\.sync\.aligned\.u32\s+{variant['worker_regs']};", ptx)  # the producer's
    assert "cp.async.bulk.tensor.3d" in ptx  # TMA


def test_the_linear_split_probe_times_the_projection_and_its_sum():
    """bench/linear_split_probe.py's `summed` (what it times with a K split): the GEMM and the sum of its
    splits give the projection, as the unsplit launch does (Triton's interpreter, a small int4 weight)."""
    import torch
    from dataclasses import replace
    from gemm_tune import meta_weights
    from linear_split_probe import summed

    from dbrx_serve.services.inference.kernels.tuner import GemmCase, random_weights
    from dbrx_serve.services.inference.kernels.tuning import LINEAR

    torch.manual_seed(0)
    w = random_weights(meta_weights(128, 256, 1, "int4", False), torch.device("cpu"))
    case = GemmCase(LINEAR, w, 1, 3)
    whole = summed(case, replace(case.default, split_k=1))().clone()
    split = summed(case, replace(case.default, split_k=2))()
    assert split.shape == whole.shape == (3, 128)
    assert torch.allclose(split.float(), whole.float(), rtol=1e-2, atol=1e-2 * whole.float().abs().max().item())
    assert not torch.equal(whole, torch.zeros_like(whole))
