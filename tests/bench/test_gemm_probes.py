"""The GEMM probes' parts that run without a GPU: their Gluon kernels compiled for Hopper (sm_90) as the
README's numbers were taken (bench/ws_gemm_probe.py's warp-specialized kernel, bench/wgmma_rate_probe.py's
loop: layout changes free, no spills, the partitions' register budgets), the read-only walks of
bench/tile_read_probe.py and the partial sums of bench/persistent_int8_probe.py (Triton's interpreter),
bench/gemm_fixed_cost_probe.py's line fit, bench/linear_split_probe.py's sum, bench/l2_prefetch_probe.py's
prefetch kernel (compiled for sm_90) and bench/epilogue_loads_probe.py's copies of gemm.py."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))


def for_hopper(snippet: str) -> dict:
    """Run snippet (it sets `result`, a dict) in a fresh Python with bench/ on its path and TRITON_INTERPRET
    unset, so that its Gluon kernels are compiled for the GPU. A process of its own: after Triton's
    interpreter has run a kernel (tests/conftest.py interprets them on the CPU), a Gluon compile in the same
    process can fail on the interpreter's builder ("'InterpreterBuilder' object has no attribute
    'get_dot_operand_layout'", seen after this file's interpreted walks)."""
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    code = f"import json, sys\nsys.path.insert(0, {str(BENCH)!r})\n{textwrap.dedent(snippet)}\nprint(json.dumps(result))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_launch_cost_fit_recovers_a_line():
    from gemm_fixed_cost_probe import fit
    points = [(b, 4.8 + b / 3.63e6) for b in (66e6, 132e6, 264e6, 528e6)]  # us = 4.8 + bytes / (3.63 TB/s)
    assert fit(points) == {"intercept_us": 4.8, "rate_gbs": 3630.0}


@pytest.mark.parametrize("precision", ["int4", "int8"])
@pytest.mark.parametrize("gated", [True, False], ids=["gate+up", "down"])
def test_the_warp_specialized_probe_compiles_for_hopper_without_spills(gated, precision):
    """Its best variant (a program's 80 registers, 32 of them the producer warp's), at the engine's default
    tiles (int8 gate+up: 64 columns of each half): the two partitions (setmaxnreg), wgmma from registers
    after a layout change the compiler proves free (the kernel asserts it: a change that moved data would
    not compile), no spills."""
    pytest.importorskip("triton.experimental.gluon")
    int8 = precision == "int8"
    block_n = 64 if int8 and gated else 128
    code = for_hopper(f"""
        import triton
        from triton.backends.compiler import GPUTarget
        from gemm_sass import report
        from ws_gemm_probe import VARIANTS, source
        variant = VARIANTS[1]
        src = source({gated}, 16, {block_n}, variant["stages"], variant["worker_regs"], {int8})
        options = {{"num_warps": 4, "maxnreg": variant["maxnreg"]}}
        result = report(src, num_stages=1, **options)  # the machine code, by the Triton wheel's cuobjdump
        result["ptx"] = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]
        result["variant"] = variant
    """)
    variant = code["variant"]
    assert code["spill_instructions"] == 0 and code["registers"] <= variant["maxnreg"]
    assert code["wgmma"] == (2 if gated else 1) * block_n // 16  # a K step: 4 wgmma (k16) a tile of 64 columns
    assert re.search(rf"setmaxnreg\.inc\.sync\.aligned\.u32\s+{variant['worker_regs']};", code["ptx"])  # the producer's
    assert "cp.async.bulk.tensor.3d" in code["ptx"]  # TMA


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


@pytest.mark.parametrize("gated", [True, False], ids=["gate+up", "down"])
def test_the_tile_read_probe_walks_every_byte_once(gated):
    """bench/tile_read_probe.py's layouts: each program's steps and chunks, as its strides place them, cover
    the buffer exactly once (so its walks read the same bytes), and walk_kernel reads what they say, a program
    an item or fewer programs looping over them (Triton's interpreter: the xor of everything it stores is the
    xor of the buffer)."""
    import functools
    import itertools

    import torch
    from tile_read_probe import layouts, walk

    plan = layouts(256, 768, 2, gated, experts=3)  # 2 programs along N, 3 experts, 2 splits of 6 steps
    words = plan["bytes"] // 4
    for name in ("tiles", "contiguous", "interleaved"):
        p = plan[name]
        starts = [e * p["stride_e"] + n * p["stride_n"] + k * p["stride_split"] + s * p["stride_k"]
                  + (j % 2) * p["stride_j1"] + (j // 2) * p["stride_j2"]
                  for n, e, k, s, j in itertools.product(range(plan["grid"][0]), range(plan["grid"][1]),
                                                         range(plan["grid"][2]), range(plan["steps"]),
                                                         range(p["streams"]))]
        covered = sorted(start + c for start in starts for c in range(p["chunk"]))
        assert covered == list(range(words)), name

    torch.manual_seed(0)
    w = torch.randint(-2**31, 2**31 - 1, (words,), dtype=torch.int32)
    everything = functools.reduce(lambda a, b: a ^ b, w.tolist())
    for layout, unroll, programs in (("tiles", 3, 0), ("interleaved", 1, 5)):  # a program an item; 5 looping
        launch, sink = walk(plan, layout, w, unroll, programs)
        launch()
        assert functools.reduce(lambda a, b: a ^ b, sink.tolist()) == everything, layout


@pytest.mark.parametrize("convert, wgmma, words", [(1, 16, 16), (2, 8, 16), (5, 16, 32)],
                         ids=["int4", "int4-half-the-wgmma", "int8"])
def test_the_wgmma_rate_probe_compiles_for_hopper(convert, wgmma, words):
    """bench/wgmma_rate_probe.py's loop with gemm_kernel's conversion (int4) or an int8 one, compiled for
    sm_90: the conversion's layout change free (the kernel asserts it), no spills, the wgmma a step it claims,
    and the conversion of a step's words in the loop (10-11 instructions a word)."""
    pytest.importorskip("triton.experimental.gluon")
    code = for_hopper(f"""
        from gemm_sass import report
        from wgmma_rate_probe import source
        result = report(source(tokens=16, convert={convert}), num_warps=4, num_stages=1)
    """)
    assert code["spill_instructions"] == 0
    assert code["wgmma"] == wgmma
    assert code["loop_instructions"] > words * 10


@pytest.mark.parametrize("gated", [True, False], ids=["gate+up", "down"])
def test_the_persistent_int8_probe_writes_gemms_partial_sums(gated):
    """bench/persistent_int8_probe.py's flattened loop over the live items, a few programs walking them,
    writes the partial sums gemm() writes at the same tiles and split, bit for bit (Triton's interpreter,
    float32): every item visited once, its K steps in order, its epilogue at its last step."""
    from dataclasses import replace

    import torch
    from gemm_tune import meta_weights
    from persistent_int8_probe import launcher

    from dbrx_serve.services.inference.kernels.tuner import GemmCase, random_weights
    from dbrx_serve.services.inference.kernels.tuning import MOE_DOWN, MOE_UP

    torch.manual_seed(0)
    w = random_weights(meta_weights(256, 256, 4, "int8", gated), torch.device("cpu"))
    case = GemmCase(MOE_UP if gated else MOE_DOWN, replace(w, scale=w.scale.float()), 2, 3)
    for block_n, splits, programs in [(64, 2, 3), (128, 4, 5), (64, 2, 1)]:
        want = case.launch(replace(case.default, block_m=16, block_n=block_n, split_k=splits, dequant=1))()
        got = launcher(case, block_n, splits, programs)()
        assert torch.equal(got, want), (block_n, splits, programs)


def test_the_l2_prefetch_probe_asks_for_every_chunk_of_its_block():
    """bench/l2_prefetch_probe.py's kernel compiled for sm_90: one predicated bulk L2 prefetch of 2 KB for
    each chunk of its block (256 chunks over a warp's 32 lanes: 8 a lane), none dropped as dead code."""
    code = for_hopper("""
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from l2_prefetch_probe import l2_prefetch_kernel
        src = ASTSource(fn=l2_prefetch_kernel, signature={"ptr": "*i8", "chunks": "i32", "EIGHTHS": "constexpr",
                                                          "BLOCK": "constexpr"},
                        constexprs={(2,): 4, (3,): 256}, attrs={(0,): [["tt.divisibility", 16]]})
        ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 1}).asm["ptx"]
        result = {"prefetches": ptx.count("@p cp.async.bulk.prefetch.L2.global"), "size": ptx.count("], 2048;")}
    """)
    assert code == {"prefetches": 8, "size": 8}


@pytest.mark.parametrize("name", ["epilogue", "prologue", "both"])
def test_the_epilogue_loads_probe_copies_gemm_with_its_cuts(name, tmp_path):
    """bench/epilogue_loads_probe.py's copies of services/inference/kernels/gemm.py: every cut found in the
    kernel as it is now (else the probe stops), made, and the copy imports with a gemm() of its own."""
    from epilogue_loads_probe import CUTS, copy

    import dbrx_serve.services.inference.kernels.gemm as engine_gemm

    module = copy(str(tmp_path), name)
    text = (tmp_path / f"gemm_{name}.py").read_text()
    assert all(new in text for new in CUTS[name].values())
    assert module.gemm is not engine_gemm.gemm and module.gemm_kernel is not engine_gemm.gemm_kernel
